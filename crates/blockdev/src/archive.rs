//! The disks of a VMA archive as read-only [`Source`](crate::Source)s: random access into a
//! backup without restoring it.
//!
//! [`Archive::open`] builds the cluster index ([`vmdump_vma::Index`]) in one pass over the
//! extent headers, data never read, and keeps it in memory (8 bytes per cluster: 128 KiB per
//! GiB of disk). Where the archive bytes come from depends on the file:
//! - uncompressed `.vma`: the file itself, with positional reads;
//! - zstd with a seek table (what vmdump writes): frames decompressed on demand, a few cached;
//! - anything else (Proxmox's `.vma.zst`, `.lzo`, `.gz`, a seekable file cut short): one pass
//!   decompressing into an unnamed cache file (`O_TMPFILE`, gone with the process).
//!
//! A truncated archive opens: what it holds reads normally, clusters it lost are read errors
//! ([`Error::Archive`] around [`vmdump_vma::Error::MissingCluster`]), never zeros. Block
//! status reports the blocks the archive marks as zero as zero holes and everything else
//! (missing clusters included) as data.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdump_compress::{Codec, Decoder, ReadAtPos, SeekableReader};
use vmdump_vma::{Header, Index, Piece};

use crate::error::{Error, Result};
use crate::{BlockStatus, Extent, ReadAt, Size};

/// Largest range one [`BlockStatus::extents`] call answers (bounds the reply size).
const MAX_STATUS: u64 = 1 << 30;

/// How an archive's bytes are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// Uncompressed: read in place.
    Plain,
    /// zstd with a seek table: frames decompressed on demand.
    Seekable {
        /// Number of zstd frames.
        frames: usize,
    },
    /// Compressed without a seek table: decompressed once into a cache file.
    Cached {
        /// The archive's compression.
        codec: Codec,
    },
}

enum Stored {
    File(File),
    Seekable(SeekableReader<File>),
}

impl Stored {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Stored::File(f) => f.read_exact_at(buf, offset),
            Stored::Seekable(s) => s.read_exact_at(buf, offset),
        }
    }

    fn len(&self) -> io::Result<u64> {
        match self {
            Stored::File(f) => Ok(f.metadata()?.len()),
            Stored::Seekable(s) => s.len_bytes(),
        }
    }
}

struct Shared {
    path: PathBuf,
    stored: Stored,
    index: Index,
}

/// An opened archive: its header, index and disks. Cheap to clone.
#[derive(Clone)]
pub struct Archive {
    shared: Arc<Shared>,
    kind: AccessKind,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("path", &self.shared.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `Read + Seek` over positional reads, for building the index.
struct Cursor<'a> {
    stored: &'a Stored,
    pos: u64,
    len: u64,
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.stored.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl Archive {
    /// Open the archive at `path` and index it. `cache_dir` holds the decompressed copy of
    /// a compressed archive without a seek table (default: `/var/tmp`).
    pub fn open(path: &Path, cache_dir: Option<&Path>) -> Result<Archive> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut head = [0u8; 9];
        let n = file
            .read_at(&mut head, 0)
            .map_err(|e| Error::io("read", path, e))?;
        let codec = Codec::from_magic(&head[..n]);
        let (stored, kind) = match codec {
            Codec::None => (Stored::File(file), AccessKind::Plain),
            Codec::Zstd => {
                match SeekableReader::open(file).map_err(|e| Error::io("read", path, e))? {
                    Some(s) => {
                        let frames = s.table().frames().len();
                        (Stored::Seekable(s), AccessKind::Seekable { frames })
                    }
                    None => (
                        Stored::File(decompress_to_cache(path, cache_dir)?),
                        AccessKind::Cached { codec },
                    ),
                }
            }
            _ => (
                Stored::File(decompress_to_cache(path, cache_dir)?),
                AccessKind::Cached { codec },
            ),
        };
        let len = stored.len().map_err(|e| Error::io("read", path, e))?;
        let index = Index::build_partial(&mut Cursor {
            stored: &stored,
            pos: 0,
            len,
        })
        .map_err(|source| Error::Archive {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        if let Some(at) = index.truncated_at() {
            tracing::warn!(
                "{}: archive ends inside the extent at offset {at}: the clusters from there on are missing and read as errors",
                path.display()
            );
        }
        Ok(Archive {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                stored,
                index,
            }),
            kind,
        })
    }

    /// The archive header (configs, devices).
    pub fn header(&self) -> &Header {
        self.shared.index.header()
    }

    /// How the bytes are reached.
    pub fn kind(&self) -> AccessKind {
        self.kind
    }

    /// Where the archive is cut off (offset of the first incomplete extent in the
    /// uncompressed stream), if it is.
    pub fn truncated_at(&self) -> Option<u64> {
        self.shared.index.truncated_at()
    }

    /// Whether every cluster of every disk is present.
    pub fn is_complete(&self) -> bool {
        self.shared.index.is_complete()
    }

    /// The disks (every device but the VM state), in archive order.
    pub fn disks(&self) -> Vec<ArchiveDisk> {
        self.header()
            .devices
            .iter()
            .filter(|d| !d.is_vmstate())
            .map(|d| ArchiveDisk {
                shared: Arc::clone(&self.shared),
                dev_id: d.id,
                name: d.name.clone(),
                size: d.size,
            })
            .collect()
    }

    /// The disk named `name` (`drive-scsi0`).
    pub fn disk(&self, name: &str) -> Option<ArchiveDisk> {
        self.disks().into_iter().find(|d| d.name == name)
    }
}

/// Decompress the whole archive into an unnamed file in `dir`. A stream that fails part way
/// (a truncated or corrupt file) keeps what was decompressed: the index then finds the
/// archive cut off there.
fn decompress_to_cache(path: &Path, dir: Option<&Path>) -> Result<File> {
    let dir = dir.unwrap_or(Path::new("/var/tmp"));
    let mut cache = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .map_err(|e| Error::io("create a cache file in", dir, e))?;
    let input = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut dec = Decoder::detect(io::BufReader::with_capacity(1 << 20, input))
        .map_err(|e| Error::io("decompress", path, io::Error::other(e)))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                cache
                    .write_all(&buf[..n])
                    .map_err(|e| Error::io("write the cache file in", dir, e))?;
                written += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(
                    "{}: decompression stopped after {written} bytes: {e}",
                    path.display()
                );
                break;
            }
        }
    }
    tracing::debug!(
        "{}: decompressed {written} bytes into a cache file in {}",
        path.display(),
        dir.display()
    );
    Ok(cache)
}

/// One disk of an [`Archive`]: read-only, `Send + Sync`, clones share the archive.
#[derive(Clone)]
pub struct ArchiveDisk {
    shared: Arc<Shared>,
    dev_id: u8,
    name: String,
    size: u64,
}

impl std::fmt::Debug for ArchiveDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveDisk")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ArchiveDisk {
    /// The device name (`drive-scsi0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The archive's device id.
    pub fn dev_id(&self) -> u8 {
        self.dev_id
    }
}

impl Size for ArchiveDisk {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for ArchiveDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = &self.shared;
        crate::check_range(&s.path, self.size, offset, buf.len() as u64)?;
        let pieces = s
            .index
            .map(self.dev_id, offset, buf.len() as u64)
            .map_err(|source| Error::ArchiveAt {
                path: s.path.clone(),
                device: self.name.clone(),
                offset,
                source: Box::new(source),
            })?;
        let mut done = 0usize;
        for p in pieces {
            let out = &mut buf[done..done + p.len() as usize];
            match p {
                Piece::Zero { .. } => out.fill(0),
                Piece::Data { archive_offset, .. } => {
                    s.stored
                        .read_exact_at(out, archive_offset)
                        .map_err(|source| Error::IoAt {
                            what: "read",
                            path: s.path.clone(),
                            offset: archive_offset,
                            source,
                        })?;
                }
            }
            done += out.len();
        }
        Ok(())
    }
}

impl BlockStatus for ArchiveDisk {
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let s = &self.shared;
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok(Vec::new());
        }
        let len = (end - range.start).min(MAX_STATUS);
        let runs = s
            .index
            .allocation(self.dev_id, range.start, len)
            .map_err(|source| Error::ArchiveAt {
                path: s.path.clone(),
                device: self.name.clone(),
                offset: range.start,
                source: Box::new(source),
            })?;
        let mut at = range.start;
        Ok(runs
            .into_iter()
            .map(|(length, zero)| {
                let e = Extent {
                    offset: at,
                    length,
                    zero,
                };
                at += length;
                e
            })
            .collect())
    }
}
