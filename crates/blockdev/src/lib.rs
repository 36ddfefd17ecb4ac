//! Disk images and block devices: one home for reading and writing them.
//!
//! # Capabilities
//! Small traits, each one thing a disk can do: [`Size`], [`ReadAt`], [`BlockStatus`]
//! (which ranges read as zeros), [`WriteAt`] (positional writes of shared [`Bytes`], so a
//! batch of slices of one buffer is written without a copy) and [`Finish`] (make durable and
//! close, reporting failures). [`Source`] and [`Target`] are the blanket supertraits callers
//! take as `Box<dyn ...>`.
//!
//! # Implementations
//! - [`RawFile`]: a raw image file or a block device; `pread`/`pwrite`, holes through
//!   `SEEK_DATA`/`SEEK_HOLE`, writeback started every 64 MiB on a helper thread while
//!   writing. [`raw::supports_direct_io`] and [`raw::protocol_driver`] are the one `O_DIRECT`
//!   probe and the one file-or-block-device check QEMU command lines use.
//! - [`Image`]: any QEMU image format (qcow2, raw, vmdk, ...) through a private
//!   `qemu-storage-daemon` ([`StorageDaemon`], started by `vmdump-launch` so it dies with
//!   vmdump and is recorded in the run dir, stopped through `vmdump-qmp`) and our NBD client,
//!   with up to 8 writes in flight and `O_DIRECT` for preallocated images on request.
//! - [`Archive`]: the disks of a VMA archive ([`ArchiveDisk`]), read in place through the
//!   cluster index: uncompressed, seekable zstd, or decompressed once into a cache file.
//! - [`MemDisk`]: an in-memory disk for fast tests.
//! - [`qemu_img`]: image info and creation.
//! - [`volume`]: the files of image volumes on dir and btrfs storage: images of a size
//!   (raw sparse, qcow2 with preallocation), btrfs subvolumes (a plain directory off btrfs),
//!   removal.
//!
//! [`SourceExport`] serves any [`Source`] read-only over NBD (`vmdump map`).
//!
//! [`SnapshotExport`] reads the point-in-time view QEMU exports during a backup with
//! fleecing (async: the engine's pull path), with the request shapes of [`SnapshotRules`]
//! (QEMU 7.2's 64 KiB workarounds, larger requests from 8.0).
//!
//! [`open_source`] and [`open_target`] pick the implementation for a path and format.
//!
//! ```no_run
//! # fn demo() -> vmdump_blockdev::Result<()> {
//! use vmdump_blockdev::{open_source, ReadAt, BlockStatus, Size};
//! let disk = open_source("/var/lib/vz/images/100/vm-100-disk-0.qcow2".as_ref(), "qcow2", None)?;
//! let zeros = disk.extents(0..disk.size())?.iter().filter(|e| e.zero).count();
//! let mut first = vec![0u8; 512];
//! disk.read_at(&mut first, 0)?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod archive;
pub mod daemon;
mod error;
pub mod export;
pub mod image;
pub mod memory;
pub mod qemu_img;
pub mod raw;
pub mod snapshot;
pub mod volume;

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;

pub use archive::{AccessKind, Archive, ArchiveDisk};
pub use daemon::StorageDaemon;
pub use error::{Error, ErrorKind, Result};
pub use export::SourceExport;
pub use image::{Image, ImageOptions};
pub use memory::MemDisk;
pub use raw::RawFile;
pub use snapshot::{SnapshotExport, SnapshotRules, SparsePiece};

/// A run of a disk with one allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Whether the run reads as zeros (a hole, or known zero).
    pub zero: bool,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Refuse a request of `len` bytes at `offset` that reaches past `size`.
pub(crate) fn check_range(path: &Path, size: u64, offset: u64, len: u64) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::OutOfRange {
            path: path.to_path_buf(),
            offset,
            len,
            size,
        });
    }
    Ok(())
}

/// The disk's size in bytes.
pub trait Size {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
}

/// Positional reads.
pub trait ReadAt: Size {
    /// Fill `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// Which ranges read as zeros.
pub trait BlockStatus: Size {
    /// The extents covering (at least the start of) `range`, in order and without gaps. May
    /// end before `range.end` (ask again from the last end); empty only for an empty range.
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>>;
}

/// Positional writes.
pub trait WriteAt: Size {
    /// Write `data` at `offset`. The disk may keep `data` until the write completes (a shared
    /// slice, no copy); errors of such a write may be reported by a later call or by
    /// [`Finish::finish`].
    fn write_at(&mut self, data: Bytes, offset: u64) -> Result<()>;
}

/// Make everything durable and close.
pub trait Finish {
    /// Wait for writes in flight, flush, close; reports the first failure.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A disk to read: sized, readable, with block status; shareable between reader threads.
pub trait Source: ReadAt + BlockStatus + Send + Sync {}
impl<T: ReadAt + BlockStatus + Send + Sync> Source for T {}

/// A disk to write.
pub trait Target: WriteAt + Finish + Send {}
impl<T: WriteAt + Finish + Send> Target for T {}

/// Open `path` of `format` for reading: a raw file or block device directly, any other format
/// through a read-only `qemu-storage-daemon` recorded in `session` (default: a session of the
/// process under the run base of the environment).
pub fn open_source(
    path: &Path,
    format: &str,
    session: Option<&std::sync::Arc<vmdump_launch::Session>>,
) -> Result<Box<dyn Source>> {
    if format == "raw" {
        return Ok(Box::new(RawFile::open(path)?));
    }
    let mut o = ImageOptions::new(path);
    o.format(format).read_only();
    if let Some(s) = session {
        o.session(s);
    }
    Ok(Box::new(o.open()?))
}

/// Open the existing, zero-reading image `path` of `format` for writing: raw directly, any
/// other format through `qemu-storage-daemon` recorded in `session` (default as for
/// [`open_source`]). `preallocated`: writes do not allocate (qcow2
/// with preallocated metadata), so the data bypasses the page cache (see
/// [`ImageOptions::direct_io`]).
pub fn open_target(
    path: &Path,
    format: &str,
    preallocated: bool,
    session: Option<&std::sync::Arc<vmdump_launch::Session>>,
) -> Result<Box<dyn Target>> {
    if format == "raw" {
        return Ok(Box::new(RawFile::open_write(path)?));
    }
    let mut o = ImageOptions::new(path);
    o.format(format).direct_io(preallocated);
    if let Some(s) = session {
        o.session(s);
    }
    Ok(Box::new(o.open()?))
}
