//! The container archive: `./etc/vzdump/pct.conf` and `./etc/vzdump/pct.fw` first, then each
//! included volume's tree at its mount path, written by `vmdump-tar` straight into the same
//! compressing archive file as VMA backups (`output::ArchiveFile`: multi-threaded zstd, gzip,
//! lzop), all in one streaming pass.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use vmdump_config::Codec;
use vmdump_tar::{PackOptions, PackStats, Packer, Writer};
use vmdump_task::{Cancel, RateLimit};

use crate::error::{Error, Result};
use crate::output::ArchiveFile;

/// One tree in the archive: the host directory and its member name (`.` or `./data`).
#[derive(Debug, Clone)]
pub struct Tree {
    /// Where the files are on the host.
    pub dir: PathBuf,
    /// The member name of its root.
    pub name: String,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Uncompressed tar bytes.
    pub bytes: u64,
    /// Packer counters.
    pub stats: PackStats,
}

/// How the archive stream is written: compression and rate.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// zstd worker threads.
    pub zstd_threads: u32,
    /// zstd level.
    pub zstd_level: i32,
    /// vzdump's `bwlimit` in bytes per second on the tar stream before compression (where
    /// vzdump puts `cstream`); 0: none.
    pub rate: u64,
}

/// Buffers handed from the walker to the compressing writer thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight: bounds memory, lets reading files overlap with compression and writing.
const IN_FLIGHT: usize = 8;

/// The walker's side of the hand-off: fills 1 MiB chunks and sends them to the writer thread.
struct ToWriter {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    n: u64,
    limit: Option<RateLimit>,
    cancel: Cancel,
}

impl ToWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.tx
            .as_ref()
            .ok_or_else(|| std::io::Error::other("archive writer closed"))?
            .send(full)
            // The writer thread stopped on an error: it reports it.
            .map_err(|_| std::io::Error::other("the archive writer stopped"))
    }
}

impl Write for ToWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let mut k = room.min(data.len());
        if let Some(limit) = &mut self.limit {
            // A slow limit must not hold up a cancel for long: checked at every grant.
            if self.cancel.is_cancelled() {
                return Err(std::io::Error::other("interrupted"));
            }
            k = limit.grant(k);
            limit.used(k);
        }
        self.buf.extend_from_slice(&data[..k]);
        self.n += k as u64;
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Writes the archive to `dat` (created, must not exist), or into `stream` (vzdump's
/// `--stdout`): the config files from `conf_dir` (`etc/vzdump/pct.conf`,
/// `etc/vzdump/pct.fw`), then `trees`. The walker runs in this thread; the compressor and
/// the file writes in another, fed through a bounded channel. On error the partial file is
/// left for the caller to delete.
pub fn write(
    dat: &Path,
    stream: Option<&std::fs::File>,
    comp: Compression,
    conf_dir: &Path,
    trees: &[Tree],
    opts: &PackOptions,
    cancel: &Cancel,
) -> Result<Written> {
    let file = ArchiveFile::open(dat, stream, comp.codec, comp.zstd_threads, comp.zstd_level)
        .map_err(|e| Error::file("create archive", dat, e))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (back, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let writer = std::thread::Builder::new()
        .name("ct-archive".into())
        .spawn(move || -> std::io::Result<()> {
            let mut out = BufWriter::with_capacity(CHUNK, file);
            for mut chunk in rx {
                out.write_all(&chunk)?;
                chunk.clear();
                let _ = back.try_send(chunk);
            }
            let file = out
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            file.finish()
        })
        .map_err(|e| Error::file("start the archive writer for", dat, e))?;
    let mut w = Writer::new(ToWriter {
        buf: Vec::with_capacity(CHUNK),
        tx: Some(tx),
        free,
        n: 0,
        limit: (comp.rate > 0).then(|| RateLimit::new(comp.rate)),
        cancel: cancel.clone(),
    });
    let cancelled = || cancel.is_cancelled();
    let packed = (|| {
        let mut p = Packer::new(&mut w, opts, &cancelled);
        for f in ["pct.conf", "pct.fw"] {
            let name = format!("./etc/vzdump/{f}");
            p.add_one(&conf_dir.join("etc/vzdump").join(f), name.as_bytes())?;
        }
        for t in trees {
            p.add_tree(&t.dir, t.name.as_bytes())?;
        }
        Ok::<_, vmdump_tar::Error>(p.finish())
    })();
    let finished = match packed {
        Ok(stats) => w.finish().map(|tw| (stats, tw)),
        Err(e) => {
            drop(w);
            Err(e)
        }
    };
    // Close the channel (on success after the last chunk), then collect the writer's result.
    let (stats, bytes) = match finished {
        Ok((stats, tw)) => (Ok(stats), tw.n),
        Err(e) => (Err(e), 0),
    };
    let written = writer.join().map_err(|_| {
        Error::file(
            "write archive",
            dat,
            std::io::Error::other("writer thread panicked"),
        )
    })?;
    if cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    // The writer's own error is the cause when the walker only saw the channel close.
    written.map_err(|e| Error::file("write archive", dat, e))?;
    let stats = stats?;
    Ok(Written { bytes, stats })
}

/// GNU tar's `--totals` line: `Total bytes written: N (1.0MiB, 12MiB/s)`.
pub fn totals_line(bytes: u64, secs: f64) -> String {
    fn human(v: f64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = v;
        let mut i = 0;
        while v >= 1024.0 && i + 1 < units.len() {
            v /= 1024.0;
            i += 1;
        }
        if v < 10.0 && i > 0 {
            format!("{v:.1}{}", units[i])
        } else {
            format!("{v:.0}{}", units[i])
        }
    }
    let rate = if secs > 0.0 {
        bytes as f64 / secs
    } else {
        bytes as f64
    };
    format!(
        "Total bytes written: {bytes} ({}, {}/s)",
        human(bytes as f64),
        human(rate)
    )
}
