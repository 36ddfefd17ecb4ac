//! The byte sink under the VMA stream: the `.dat` file behind an in-process
//! `vmdump-compress` encoder (pass-through, zstd, lzop container, gzip), written with
//! `O_DIRECT` where the file system allows it ([`crate::direct`]), else through the page cache
//! with a background syncer.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use vmdump_compress::{Codec, Encoder, EncoderOptions};

use crate::direct::Sink;

/// Bytes written between two background `fdatasync`s of the archive file. Dirty pages are
/// written back while the transfer goes on, so the final fsync (the commit) is short; without
/// it a machine with lots of RAM would write the whole archive back only at the end.
const SYNC_EVERY: u64 = 128 << 20;

/// The archive file being written: the encoder chain plus a background syncer.
pub struct ArchiveFile {
    /// `None` once finished.
    enc: Option<Encoder<Sink>>,
    /// A second handle on the archive file, for the final fsync.
    file: File,
    codec: Codec,
    written: u64,
    next_sync: u64,
    syncer: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)>,
}

impl std::fmt::Debug for ArchiveFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveFile({})", self.codec.name())
    }
}

/// The encoder settings for a vzdump compression choice.
fn encoder_options(codec: Codec, zstd_threads: u32, zstd_level: i32) -> EncoderOptions {
    let level = match codec {
        Codec::Zstd => Some(zstd_level),
        // Speed over ratio, as for zstd: gzip level 1.
        Codec::Gzip => Some(1),
        _ => None,
    };
    // `vmdump-compress` runs zstd in the caller's thread for 0; one worker gains nothing.
    let threads = if zstd_threads > 1 { zstd_threads } else { 0 };
    EncoderOptions { level, threads }
}

impl ArchiveFile {
    /// Creates `path` (which must not exist) and the encoder for `codec`.
    pub fn create(
        path: &Path,
        codec: Codec,
        zstd_threads: u32,
        zstd_level: i32,
    ) -> io::Result<Self> {
        let (sink, sync, direct) = Sink::create(path)?;
        Self::on(sink, sync, direct, codec, zstd_threads, zstd_level)
    }

    /// [`create`](Self::create)s `path`, or with `stream` (vzdump's `--stdout`: a pipe or a
    /// file opened by the caller) writes into a handle of that instead.
    pub fn open(
        path: &Path,
        stream: Option<&File>,
        codec: Codec,
        zstd_threads: u32,
        zstd_level: i32,
    ) -> io::Result<Self> {
        match stream {
            Some(f) => {
                let sink = Sink::buffered(f.try_clone()?);
                Self::on(sink, f.try_clone()?, false, codec, zstd_threads, zstd_level)
            }
            None => Self::create(path, codec, zstd_threads, zstd_level),
        }
    }

    /// The encoder for `codec` over `sink`; `sync` is a second handle on the file, `direct`
    /// says whether the sink bypasses the page cache.
    fn on(
        sink: Sink,
        sync: File,
        direct: bool,
        codec: Codec,
        zstd_threads: u32,
        zstd_level: i32,
    ) -> io::Result<Self> {
        let opts = encoder_options(codec, zstd_threads, zstd_level);
        let enc = Encoder::new(codec, sink, &opts).map_err(io::Error::other)?;
        // Direct writes leave no dirty pages to write back early; a pipe has none at all.
        let syncer = if direct || !sync.metadata()?.is_file() {
            None
        } else {
            let background = sync.try_clone()?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let syncer = std::thread::Builder::new()
                .name("archive-sync".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        // Errors show up again at the final fsync.
                        let _ = background.sync_data();
                    }
                })?;
            Some((tx, syncer))
        };
        Ok(ArchiveFile {
            enc: Some(enc),
            file: sync,
            codec,
            written: 0,
            next_sync: SYNC_EVERY,
            syncer,
        })
    }

    fn stop_syncer(&mut self) {
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Ends the compressed stream and fsyncs the file; a failed fsync says so (the data may
    /// not be on disk although every write succeeded).
    pub fn finish(mut self) -> io::Result<()> {
        self.stop_syncer();
        let Some(enc) = self.enc.take() else {
            return Ok(());
        };
        enc.finish().map_err(io::Error::other)?.finish()?;
        // A pipe (`--stdout`) has nothing to sync.
        if !self.file.metadata()?.is_file() {
            return Ok(());
        }
        self.file
            .sync_all()
            .map_err(|e| io::Error::new(e.kind(), format!("fsync failed: {e}")))
    }

    /// Gives up on the archive (the file is deleted by the caller).
    pub fn abort(mut self) {
        self.stop_syncer();
    }
}

impl Drop for ArchiveFile {
    fn drop(&mut self) {
        self.stop_syncer();
    }
}

impl ArchiveFile {
    fn note(&mut self, n: usize) {
        self.written += n as u64;
        if self.written >= self.next_sync {
            self.next_sync = self.written + SYNC_EVERY;
            if let Some((tx, _)) = &self.syncer {
                // A sync still running is enough; never wait for it.
                let _ = tx.try_send(());
            }
        }
    }
}

impl Write for ArchiveFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let enc = self.enc.as_mut().ok_or_else(finished)?;
        let n = enc.write(buf)?;
        self.note(n);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let enc = self.enc.as_mut().ok_or_else(finished)?;
        enc.write_all(buf)?;
        self.note(buf.len());
        Ok(())
    }

    /// Vectored writes reach the file as one `writev` when uncompressed (the VMA writer
    /// hands over an extent as its header plus slices of the NBD payloads).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let enc = self.enc.as_mut().ok_or_else(finished)?;
        let n = enc.write_vectored(bufs)?;
        self.note(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.enc {
            Some(enc) => enc.flush(),
            None => Ok(()),
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("archive already finished")
}
