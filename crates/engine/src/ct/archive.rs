//! The container archive: `./etc/vzdump/pct.conf` and `./etc/vzdump/pct.fw` first, then each
//! included volume's tree at its mount path, written by `vmdump-tar` straight into the same
//! compressing archive file as VMA backups (`output::ArchiveFile`: multi-threaded zstd, gzip,
//! lzop), all in one streaming pass.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use vmdump_config::Codec;
use vmdump_tar::{PackOptions, PackStats, Packer, Writer};
use vmdump_task::Cancel;

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

/// Counts bytes going through.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compression settings of the archive.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// zstd worker threads.
    pub zstd_threads: u32,
    /// zstd level.
    pub zstd_level: i32,
}

/// Writes the archive to `dat` (created, must not exist): the config files from `conf_dir`
/// (`etc/vzdump/pct.conf`, `etc/vzdump/pct.fw`), then `trees`. On error the partial file
/// is left for the caller to delete.
pub fn write(
    dat: &Path,
    comp: Compression,
    conf_dir: &Path,
    trees: &[Tree],
    opts: &PackOptions,
    cancel: &Cancel,
) -> Result<Written> {
    let file = ArchiveFile::create(dat, comp.codec, comp.zstd_threads, comp.zstd_level)
        .map_err(|e| Error::file("create archive", dat, e))?;
    let mut w = Writer::new(Counting {
        inner: BufWriter::with_capacity(1 << 20, file),
        n: 0,
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
    if cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    let stats = packed?;
    let counting = w.finish()?;
    let bytes = counting.n;
    let file = counting
        .inner
        .into_inner()
        .map_err(|e| Error::file("write archive", dat, e.into_error()))?;
    file.finish()
        .map_err(|e| Error::file("finish archive", dat, e))?;
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
