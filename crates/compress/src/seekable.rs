//! The zstd seekable format: a stream of independent zstd frames followed by a seek table in
//! a skippable frame, so any decompressed offset can be reached by decompressing one frame.
//!
//! Layout (zstd's `contrib/seekable_format`, all integers little-endian): ordinary zstd
//! frames, each compressing at most [`DEFAULT_FRAME_SIZE`] bytes of input on its own (no
//! shared window), then one skippable frame with magic [`SEEK_TABLE_MAGIC`], a u32 frame
//! size, one entry per data frame (u32 compressed size, u32 decompressed size, no
//! checksum), and a 9-byte footer: u32 number of frames, u8 descriptor (0: no per-entry
//! checksums), u32 [`SEEKABLE_MAGIC`]. Every zstd decoder skips the skippable frame, so
//! `zstd -d`, Proxmox's restore and any other reader still read the file as one stream.
//!
//! [`SeekableWriter`] compresses frames on worker threads and writes them in order;
//! [`SeekTable`] finds and validates the table at the end of a file; [`SeekableReader`]
//! serves reads at any decompressed offset (a small cache of decompressed frames) and
//! [`ParallelDecoder`] streams the whole content with frames decompressed in parallel.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Decompressed bytes per frame written by [`SeekableWriter`] (4 MiB: about 1% larger
/// output than one stream at level 3, see docs/benchmarks.md).
pub const DEFAULT_FRAME_SIZE: usize = 4 << 20;
/// Magic of the skippable frame holding the seek table.
pub const SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;
/// Magic at the very end of a seekable file.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER: usize = 9;
/// Largest decompressed frame accepted from a table (hostile input bound).
const MAX_FRAME: u64 = 1 << 30;
/// Decompressed frames kept by a [`SeekableReader`].
const CACHE_FRAMES: usize = 8;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Positional reads of a stored file (a `File`, or bytes in memory for tests).
pub trait ReadAtPos: Send + Sync {
    /// Fill `buf` from `offset`; an error if the file ends first.
    fn read_exact_at_pos(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Length in bytes.
    fn len_bytes(&self) -> io::Result<u64>;
}

impl ReadAtPos for File {
    fn read_exact_at_pos(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAtPos for Vec<u8> {
    fn read_exact_at_pos(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = usize::try_from(offset).ok().filter(|s| *s <= self.len());
        match s.and_then(|s| self.get(s..s + buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAtPos + ?Sized> ReadAtPos for Arc<T> {
    fn read_exact_at_pos(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at_pos(buf, offset)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        (**self).len_bytes()
    }
}

/// One data frame of a seekable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    /// Offset of the compressed frame in the file.
    pub compressed_offset: u64,
    /// Compressed length.
    pub compressed_len: u32,
    /// Offset of its content in the decompressed stream.
    pub offset: u64,
    /// Decompressed length.
    pub len: u32,
}

/// The seek table of a seekable zstd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekTable {
    frames: Vec<FrameEntry>,
    size: u64,
}

impl SeekTable {
    /// Read the table at the end of `file`. `Ok(None)` when the file does not end with a
    /// seek table (an ordinary zstd stream, or a truncated seekable file); an error when it
    /// does but the table does not describe the file.
    pub fn read(file: &dyn ReadAtPos) -> io::Result<Option<SeekTable>> {
        let len = file.len_bytes()?;
        if len < (FOOTER + 8) as u64 {
            return Ok(None);
        }
        let mut foot = [0u8; FOOTER];
        file.read_exact_at_pos(&mut foot, len - FOOTER as u64)?;
        if u32::from_le_bytes(foot[5..9].try_into().expect("4 bytes")) != SEEKABLE_MAGIC {
            return Ok(None);
        }
        let count = u64::from(u32::from_le_bytes(foot[0..4].try_into().expect("4 bytes")));
        let desc = foot[4];
        if desc & 0x7c != 0 {
            return Err(invalid(format!(
                "seek table: reserved descriptor bits set ({desc:#04x})"
            )));
        }
        let entry = if desc & 0x80 != 0 { 12u64 } else { 8 };
        let body = count * entry + FOOTER as u64;
        if body + 8 > len {
            return Err(invalid(format!(
                "seek table: {count} frames do not fit in {len} bytes"
            )));
        }
        let start = len - body - 8;
        let mut head = [0u8; 8];
        file.read_exact_at_pos(&mut head, start)?;
        let magic = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let size = u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")));
        if magic != SEEK_TABLE_MAGIC || size != body {
            return Err(invalid(format!(
                "seek table: bad skippable frame header at offset {start}"
            )));
        }
        let mut raw = vec![0u8; (count * entry) as usize];
        file.read_exact_at_pos(&mut raw, start + 8)?;
        let mut frames = Vec::with_capacity(count as usize);
        let (mut c, mut d) = (0u64, 0u64);
        for e in raw.chunks_exact(entry as usize) {
            let clen = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes"));
            let dlen = u32::from_le_bytes(e[4..8].try_into().expect("4 bytes"));
            if u64::from(dlen) > MAX_FRAME {
                return Err(invalid(format!(
                    "seek table: frame {} of {dlen} bytes is too large",
                    frames.len()
                )));
            }
            frames.push(FrameEntry {
                compressed_offset: c,
                compressed_len: clen,
                offset: d,
                len: dlen,
            });
            c += u64::from(clen);
            d += u64::from(dlen);
        }
        if c != start {
            return Err(invalid(format!(
                "seek table: frames cover {c} bytes, the table starts at {start}"
            )));
        }
        Ok(Some(SeekTable { frames, size: d }))
    }

    /// The frames in order.
    pub fn frames(&self) -> &[FrameEntry] {
        &self.frames
    }

    /// Decompressed size of the whole stream.
    pub fn decompressed_size(&self) -> u64 {
        self.size
    }

    /// Index of the frame holding decompressed `offset`.
    pub fn frame_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        let i = self.frames.partition_point(|f| f.offset <= offset);
        Some(i - 1)
    }
}

fn decompress_frame(file: &dyn ReadAtPos, f: &FrameEntry) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_frame_into(file, f, &mut out)?;
    Ok(out)
}

/// Decompresses frame `f` into `out` (replacing its content, reusing its capacity). Each
/// thread keeps its decompression context and its buffer for the compressed bytes, so a
/// frame costs no allocation once the buffers have grown (fresh multi-MiB buffers per frame
/// cost a page fault per 4 KiB, which made parallel restores slower than one stream).
fn decompress_frame_into(
    file: &dyn ReadAtPos,
    f: &FrameEntry,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    type State = (zstd::bulk::Decompressor<'static>, Vec<u8>);
    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((zstd::bulk::Decompressor::new()?, Vec::new()));
        }
        let (dctx, comp) = slot.as_mut().expect("state set above");
        comp.resize(f.compressed_len as usize, 0);
        file.read_exact_at_pos(comp, f.compressed_offset)?;
        out.clear();
        out.reserve(f.len as usize);
        let n = dctx
            .decompress_to_buffer(&comp[..], out)
            .map_err(|e| invalid(format!("zstd frame at offset {}: {e}", f.compressed_offset)))?;
        if n != f.len as usize {
            return Err(invalid(format!(
                "zstd frame at offset {}: {n} bytes, the seek table says {}",
                f.compressed_offset, f.len
            )));
        }
        Ok(())
    })
}

/// Random access to the decompressed content of a seekable zstd file. `Sync`: reads from
/// several threads decompress different frames at once; the last few frames are cached.
pub struct SeekableReader<R> {
    file: R,
    table: SeekTable,
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
}

impl<R> std::fmt::Debug for SeekableReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekableReader")
            .field("frames", &self.table.frames.len())
            .field("size", &self.table.size)
            .finish_non_exhaustive()
    }
}

impl<R: ReadAtPos> SeekableReader<R> {
    /// Open `file`; `Ok(None)` if it has no seek table (see [`SeekTable::read`]).
    pub fn open(file: R) -> io::Result<Option<Self>> {
        let Some(table) = SeekTable::read(&file)? else {
            return Ok(None);
        };
        Ok(Some(SeekableReader {
            file,
            table,
            cache: Mutex::new(VecDeque::new()),
        }))
    }

    /// The seek table.
    pub fn table(&self) -> &SeekTable {
        &self.table
    }

    /// The underlying file.
    pub fn file(&self) -> &R {
        &self.file
    }

    fn frame(&self, i: usize) -> io::Result<Arc<Vec<u8>>> {
        if let Some((_, f)) = self
            .cache
            .lock()
            .expect("cache lock")
            .iter()
            .find(|(k, _)| *k == i)
        {
            return Ok(Arc::clone(f));
        }
        let data = Arc::new(decompress_frame(&self.file, &self.table.frames[i])?);
        let mut c = self.cache.lock().expect("cache lock");
        if c.len() >= CACHE_FRAMES {
            c.pop_front();
        }
        c.push_back((i, Arc::clone(&data)));
        Ok(data)
    }

    /// Fill `buf` with decompressed bytes from `offset`; an error past the end.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let Some(i) = self.table.frame_at(pos) else {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            };
            let frame = self.frame(i)?;
            let at = (pos - self.table.frames[i].offset) as usize;
            let n = (frame.len() - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&frame[at..at + n]);
            done += n;
        }
        Ok(())
    }
}

impl<R: ReadAtPos> ReadAtPos for SeekableReader<R> {
    fn read_exact_at_pos(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.table.size)
    }
}

type Pending<T> = Receiver<io::Result<T>>;
/// A job and where its result goes.
type Job<J, T> = (J, SyncSender<io::Result<T>>);

/// A small ordered pool: jobs go to `threads` workers, results come back in submission
/// order through one rendezvous channel per job.
struct OrderedPool<J: Send + 'static, T: Send + 'static = Vec<u8>> {
    jobs: Option<SyncSender<Job<J, T>>>,
    pending: VecDeque<Pending<T>>,
    workers: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static, T: Send + 'static> OrderedPool<J, T> {
    fn new(
        threads: usize,
        name: &str,
        work: impl Fn(J) -> io::Result<T> + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Job<J, T>>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let work = Arc::new(work);
        let mut workers = Vec::new();
        for k in 0..threads {
            let rx = Arc::clone(&rx);
            let work = Arc::clone(&work);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{k}"))
                    .spawn(move || loop {
                        let job = rx.lock().expect("job queue lock").recv();
                        let Ok((job, reply)) = job else { return };
                        let _ = reply.send(work(job));
                    })?,
            );
        }
        Ok(OrderedPool {
            jobs: Some(tx),
            pending: VecDeque::new(),
            workers,
        })
    }

    fn submit(&mut self, job: J) -> io::Result<()> {
        let (tx, rx) = sync_channel(1);
        self.jobs
            .as_ref()
            .expect("pool open")
            .send((job, tx))
            .map_err(|_| io::Error::other("worker pool stopped"))?;
        self.pending.push_back(rx);
        Ok(())
    }

    fn next(&mut self) -> Option<io::Result<T>> {
        let rx = self.pending.pop_front()?;
        Some(
            rx.recv()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread died"))),
        )
    }
}

impl<J: Send + 'static, T: Send + 'static> Drop for OrderedPool<J, T> {
    fn drop(&mut self) {
        self.pending.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A frame's input and the buffer its compressed bytes go to (both reused, frame after frame).
type FrameJob = (Vec<u8>, Vec<u8>);

/// Writes the zstd seekable format: every [`DEFAULT_FRAME_SIZE`] bytes of input become one
/// independent frame (with its content size and checksum), compressed on `threads` worker
/// threads (0: in the caller's thread) and written in order; [`SeekableWriter::finish`]
/// appends the seek table. The input and output buffers of the frames are reused, so a long
/// stream allocates (and page-faults in) a few buffers only.
pub struct SeekableWriter<W: Write> {
    /// Always `Some` until [`SeekableWriter::finish`] takes it.
    inner: Option<W>,
    level: i32,
    frame_size: usize,
    buf: Vec<u8>,
    entries: Vec<(u32, u32)>,
    sizes: VecDeque<u32>,
    pool: Option<OrderedPool<FrameJob, FrameJob>>,
    depth: usize,
    /// Buffers free for the next frames (input or output).
    spare: Vec<Vec<u8>>,
}

impl<W: Write> std::fmt::Debug for SeekableWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekableWriter")
            .field("level", &self.level)
            .field("frames", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Compresses one frame with its content size and checksum into `out` (cleared first).
/// Each thread keeps its zstd context for the next frame (a context per frame costs its
/// allocation every few MiB).
fn compress_frame(level: i32, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    thread_local! {
        static CONTEXT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((l, _)) if *l == level) {
            let mut c = zstd::bulk::Compressor::new(level)?;
            c.include_checksum(true)?;
            c.include_contentsize(true)?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("context set above");
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, out).map(|_| ())
    })
}

impl<W: Write> SeekableWriter<W> {
    /// A writer at zstd `level` with `threads` compression threads.
    pub fn new(inner: W, level: i32, threads: u32) -> io::Result<Self> {
        Self::with_frame_size(inner, level, threads, DEFAULT_FRAME_SIZE)
    }

    /// Same with frames of `frame_size` input bytes (1 KiB ..= 1 GiB).
    pub fn with_frame_size(
        inner: W,
        level: i32,
        threads: u32,
        frame_size: usize,
    ) -> io::Result<Self> {
        if !(1024..=MAX_FRAME as usize).contains(&frame_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame size {frame_size} not in 1 KiB..=1 GiB"),
            ));
        }
        // Check the level once here rather than on every frame.
        zstd::bulk::Compressor::new(level)?;
        let pool = if threads > 0 {
            Some(OrderedPool::new(
                threads as usize,
                "zstd-frame",
                move |(data, mut out): FrameJob| {
                    compress_frame(level, &data, &mut out)?;
                    Ok((data, out))
                },
            )?)
        } else {
            None
        };
        Ok(SeekableWriter {
            inner: Some(inner),
            level,
            frame_size,
            buf: Vec::with_capacity(frame_size),
            entries: Vec::new(),
            sizes: VecDeque::new(),
            pool,
            depth: 2 * threads as usize,
            spare: Vec::new(),
        })
    }

    fn out(&mut self) -> &mut W {
        self.inner.as_mut().expect("writer present until finish")
    }

    fn emit(&mut self, data: &[u8], dlen: u32) -> io::Result<()> {
        self.out().write_all(data)?;
        let clen = u32::try_from(data.len())
            .map_err(|_| io::Error::other("compressed frame over 4 GiB"))?;
        self.entries.push((clen, dlen));
        Ok(())
    }

    fn drain(&mut self, keep: usize) -> io::Result<()> {
        while self.pool.as_ref().is_some_and(|p| p.pending.len() > keep) {
            let (data, out) = self.pool.as_mut().expect("pool").next().expect("pending")?;
            let dlen = self.sizes.pop_front().expect("size of a pending frame");
            self.emit(&out, dlen)?;
            self.recycle(data);
            self.recycle(out);
        }
        Ok(())
    }

    /// Keeps `buf` for a later frame (as many as the frames in flight can use).
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 2 * self.depth + 2 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let dlen = self.buf.len() as u32;
        if self.pool.is_some() {
            let next = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.frame_size));
            let data = std::mem::replace(&mut self.buf, next);
            let out = self.spare.pop().unwrap_or_default();
            self.pool.as_mut().expect("pool").submit((data, out))?;
            self.sizes.push_back(dlen);
            let keep = self.depth;
            self.drain(keep)
        } else {
            let mut out = self.spare.pop().unwrap_or_default();
            compress_frame(self.level, &self.buf, &mut out)?;
            self.buf.clear();
            let res = self.emit(&out, dlen);
            self.recycle(out);
            res
        }
    }

    /// Compress what is buffered, write the seek table and return the writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.cut()?;
        self.drain(0)?;
        let count = u32::try_from(self.entries.len())
            .map_err(|_| io::Error::other("more than 2^32 frames"))?;
        let body = self.entries.len() * 8 + FOOTER;
        let mut t = Vec::with_capacity(body + 8);
        t.extend_from_slice(&SEEK_TABLE_MAGIC.to_le_bytes());
        t.extend_from_slice(&(body as u32).to_le_bytes());
        for (c, d) in &self.entries {
            t.extend_from_slice(&c.to_le_bytes());
            t.extend_from_slice(&d.to_le_bytes());
        }
        t.extend_from_slice(&count.to_le_bytes());
        t.push(0);
        t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        self.out().write_all(&t)?;
        self.out().flush()?;
        self.pool = None;
        Ok(self.inner.take().expect("writer present until finish"))
    }

    /// The writer (for its position, e.g. bytes written so far).
    pub fn get_ref(&self) -> &W {
        self.inner.as_ref().expect("writer present until finish")
    }
}

impl<W: Write> Write for SeekableWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.frame_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.frame_size {
            self.cut()?;
        }
        Ok(n)
    }

    /// Flushes the inner writer: the frames written to it so far reach their destination. A
    /// partial frame stays buffered (cutting it would only cost compression), and with
    /// worker threads up to `2 * threads` complete frames may still be compressing; they
    /// are written by later writes or [`finish`](Self::finish), not by this call.
    fn flush(&mut self) -> io::Result<()> {
        self.out().flush()
    }
}

/// Streams the decompressed content of a seekable file with `threads` frames decompressed
/// in parallel (read-ahead of twice that many frames), for restores.
pub struct ParallelDecoder {
    pool: OrderedPool<usize>,
    /// Consumed output buffers, for the workers to decompress the next frames into.
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    next_submit: usize,
    frames: usize,
    current: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl std::fmt::Debug for ParallelDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelDecoder")
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl ParallelDecoder {
    /// Decode `file` whose table is `table` on `threads` (at least 1) worker threads.
    pub fn new(
        file: Arc<dyn ReadAtPos>,
        table: SeekTable,
        threads: usize,
    ) -> io::Result<ParallelDecoder> {
        let frames = table.frames.len();
        let table = Arc::new(table);
        let threads = threads.max(1);
        let free: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let recycled = Arc::clone(&free);
        let mut pool = OrderedPool::new(threads, "zstd-decode", move |i: usize| {
            let mut out = recycled
                .lock()
                .expect("buffer list lock")
                .pop()
                .unwrap_or_default();
            decompress_frame_into(&*file, &table.frames[i], &mut out)?;
            Ok(out)
        })?;
        let ahead = (2 * threads).min(frames);
        for i in 0..ahead {
            pool.submit(i)?;
        }
        Ok(ParallelDecoder {
            pool,
            free,
            next_submit: ahead,
            frames,
            current: Vec::new(),
            pos: 0,
            failed: false,
        })
    }
}

impl Read for ParallelDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.failed {
                return Err(io::Error::other("an earlier frame failed to decompress"));
            }
            let Some(next) = self.pool.next() else {
                return Ok(0);
            };
            if self.next_submit < self.frames {
                self.pool.submit(self.next_submit)?;
                self.next_submit += 1;
            }
            match next {
                Ok(data) => {
                    let used = std::mem::replace(&mut self.current, data);
                    if used.capacity() > 0 {
                        self.free.lock().expect("buffer list lock").push(used);
                    }
                    self.pos = 0;
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_pool_has_stopped_its_workers() {
        // Each worker holds the work closure, and with it `probe`, until it ends.
        let probe = Arc::new(());
        let held = Arc::clone(&probe);
        let mut pool = OrderedPool::new(3, "pool-test", move |x: u32| {
            let _ = &held;
            Ok(x * 2)
        })
        .unwrap();
        for x in 0..5 {
            pool.submit(x).unwrap();
        }
        assert_eq!(pool.next().unwrap().unwrap(), 0);
        assert_eq!(pool.next().unwrap().unwrap(), 2);
        drop(pool);
        assert_eq!(Arc::strong_count(&probe), 1, "every worker has ended");
    }

    #[test]
    fn frame_buffers_are_reused() {
        // In the caller's thread: the one output buffer goes back to the spare list after
        // each frame and is taken again for the next one.
        let mut w = SeekableWriter::with_frame_size(Vec::new(), 3, 0, 1024).unwrap();
        w.write_all(&[1u8; 5 * 1024]).unwrap();
        assert_eq!(w.entries.len(), 5);
        assert_eq!(w.spare.len(), 1);
        assert!(w.spare[0].capacity() > 0, "a used buffer");
        // On workers: the buffers of frames written come back, up to two per frame in
        // flight and two more.
        let mut w = SeekableWriter::with_frame_size(Vec::new(), 3, 2, 1024).unwrap();
        for _ in 0..30 {
            w.write_all(&[2u8; 1024]).unwrap();
            assert!(w.spare.len() <= 2 * 4 + 2, "{}", w.spare.len());
        }
        assert!(!w.spare.is_empty());
        let out = w.finish().unwrap();
        assert_eq!(SeekTable::read(&out).unwrap().unwrap().frames().len(), 30);
    }
}
