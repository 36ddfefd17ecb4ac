//! The byte sink under the VMA stream: the `.dat` file behind an in-process
//! `vmdump-compress` encoder (pass-through, zstd, lzop container, gzip), written through the
//! page cache with a background syncer that writes it back as it grows and then drops its
//! clean pages.
//!
//! Why the page cache and not `O_DIRECT`: the archive usually shares a disk with the guest's
//! reads (QEMU's and everyone else's). The kernel's writeback throttling holds buffered
//! writeback back while reads wait, and direct writes bypass it; on a disk that is the
//! limit, the direct writer left QEMU's source reads waiting (docs/benchmarks.md: 0.56-0.74x
//! QEMU's own push, against 0.83-1.08x through the page cache, in interleaved sets). It costs
//! about 0.4-1 s more CPU per 2 GiB (the copy into the page cache).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use vmdump_compress::{Codec, Encoder, EncoderOptions};

/// Buffer in front of the file.
const BUF: usize = 1 << 20;

/// Bytes written between two background `fdatasync`s of the archive file. Dirty pages are
/// written back while the transfer goes on, so the final fsync (the commit) is short; without
/// it a machine with lots of RAM would write the whole archive back only at the end.
const SYNC_EVERY: u64 = 128 << 20;

/// The archive file being written: the encoder chain plus a background syncer.
pub struct ArchiveFile {
    /// What the bytes go to, for messages: the file's path, or "standard output".
    target: String,
    /// `None` once finished.
    enc: Option<Encoder<BufWriter<File>>>,
    /// A second handle on the archive file, for the final fsync.
    file: File,
    codec: Codec,
    written: u64,
    next_sync: u64,
    syncer: Option<(
        std::sync::mpsc::SyncSender<()>,
        std::thread::JoinHandle<io::Result<()>>,
    )>,
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
        let file = File::options().write(true).create_new(true).open(path)?;
        Self::on(
            path.display().to_string(),
            file,
            codec,
            zstd_threads,
            zstd_level,
        )
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
            Some(f) => Self::on(
                "standard output".into(),
                f.try_clone()?,
                codec,
                zstd_threads,
                zstd_level,
            ),
            None => Self::create(path, codec, zstd_threads, zstd_level),
        }
    }

    /// The encoder for `codec` over `file` (named `target` in messages).
    fn on(
        target: String,
        file: File,
        codec: Codec,
        zstd_threads: u32,
        zstd_level: i32,
    ) -> io::Result<Self> {
        let opts = encoder_options(codec, zstd_threads, zstd_level);
        let sync = file.try_clone()?;
        let enc = Encoder::new(codec, BufWriter::with_capacity(BUF, file), &opts)
            .map_err(io::Error::other)?;
        // A pipe has no pages to write back.
        let syncer = if sync.metadata()?.is_file() {
            let background = sync.try_clone()?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let syncer = std::thread::Builder::new()
                .name("archive-sync".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        // A writeback error is reported once, to whichever fsync of the open
                        // file comes first: this one. It is kept for `finish`, never
                        // dropped (the final fsync would not see it again).
                        background.sync_data()?;
                        // Written back: nobody reads the archive back, so its clean pages
                        // need not crowd the host's page cache.
                        let _ =
                            rustix::fs::fadvise(&background, 0, None, rustix::fs::Advice::DontNeed);
                    }
                    Ok(())
                })?;
            Some((tx, syncer))
        } else {
            None
        };
        Ok(ArchiveFile {
            target,
            enc: Some(enc),
            file: sync,
            codec,
            written: 0,
            next_sync: SYNC_EVERY,
            syncer,
        })
    }

    /// What the bytes go to: the file's path, or "standard output" (`--stdout`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Stops the background syncer; the error of a background fsync, if one failed.
    fn stop_syncer(&mut self) -> io::Result<()> {
        match self.syncer.take() {
            Some((tx, handle)) => {
                drop(tx);
                handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the archive syncer panicked")))
            }
            None => Ok(()),
        }
    }

    /// Ends the compressed stream and fsyncs the file; a failed fsync, in the background or
    /// now, says so (the data may not be on disk although every write succeeded).
    pub fn finish(mut self) -> io::Result<()> {
        let background = self.stop_syncer();
        let Some(enc) = self.enc.take() else {
            return Ok(());
        };
        enc.finish().map_err(io::Error::other)?.flush()?;
        background.map_err(|e| io::Error::new(e.kind(), format!("fsync failed: {e}")))?;
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
        let _ = self.stop_syncer();
    }
}

impl Drop for ArchiveFile {
    fn drop(&mut self) {
        let _ = self.stop_syncer();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of `path` in the page cache (util-linux `fincore`).
    fn cached(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["-b", "-n", "-o", "RES"])
            .arg(path)
            .output()
            .expect("fincore");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a byte count")
    }

    #[test]
    fn the_archive_is_written_whole_and_leaves_the_page_cache_as_it_goes() {
        // /var/tmp is a disk file system here and in CI (tmpfs pages cannot be dropped).
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("a.dat");
        let mut f = ArchiveFile::create(&path, Codec::None, 0, 1).expect("create");
        let piece: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i * 31 % 251) as u8).collect();
        let n = 300;
        for _ in 0..n {
            f.write_all(&piece).expect("write");
        }
        f.finish().expect("finish");
        let data = std::fs::read(&path).expect("read");
        assert_eq!(data.len(), n * piece.len());
        assert!(data.chunks(piece.len()).all(|c| c == piece));
        drop(data);
        // A second archive, not read back, for the page cache.
        let path = dir.path().join("b.dat");
        let mut f = ArchiveFile::create(&path, Codec::None, 0, 1).expect("create");
        for _ in 0..n {
            f.write_all(&piece).expect("write");
        }
        f.finish().expect("finish");
        // The syncs at 128 and 256 MiB wrote back and dropped at least the first 128 MiB.
        let res = cached(&path);
        assert!(
            res <= (n as u64) * piece.len() as u64 - SYNC_EVERY,
            "{res} bytes of the archive still cached"
        );
        assert!(
            ArchiveFile::create(&path, Codec::None, 0, 1).is_err(),
            "never replaced"
        );
    }

    #[test]
    fn a_failed_background_fsync_fails_the_finish() {
        // The background fsync at 128 MiB fails; the final one succeeds. The first failure
        // is the only report of a writeback error, so `finish` must not succeed.
        let tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let (backing, mnt) = (tmp.path().join("b"), tmp.path().join("m"));
        std::fs::create_dir_all(&backing).expect("mkdir");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        let fs = vmdump_testkit::faultfs::FaultFs::mount(&backing, &mnt).expect("faultfs");
        fs.faults().fail_fsync(Some("*.dat"));
        let mut f = ArchiveFile::create(&mnt.join("a.dat"), Codec::None, 0, 1).expect("create");
        let piece = vec![7u8; 1 << 20];
        for _ in 0..160 {
            f.write_all(&piece).expect("write");
        }
        // Until the background fsync has been tried.
        let t0 = std::time::Instant::now();
        while fs.faults().fsync_failures() == 0 {
            assert!(t0.elapsed().as_secs() < 30, "no background fsync");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        fs.faults().fail_fsync(None);
        let e = f.finish().expect_err("a background fsync failed");
        assert!(e.to_string().starts_with("fsync failed: "), "{e}");
        drop(fs);
    }
}
