//! VMA archive format (Proxmox "Virtual Machine Archive"): streaming writer,
//! validating streaming reader, and a cluster index for random access.
//!
//! # Design
//!
//! A VMA archive is a header (configs, device table, blob buffer) followed by extents
//! of up to 59 clusters of 64 KiB, stored as 4 KiB blocks with a per-cluster zero mask.
//! It is append-only and ends at EOF, so it streams through pipes and compressors.
//! The byte layout is described in `docs/formats/vma.md`.
//!
//! * [`Writer`] produces output byte-identical to Proxmox's `vma-writer.c` for the same
//!   uuid, ctime and cluster order: at most 58 clusters per extent, Proxmox's blob-table
//!   growth, header written with the first extent, a config-only archive ends with one
//!   empty extent. It is single-threaded and `Send`: several producers feed it through
//!   a channel. Memory is one extent buffer plus one bit per cluster.
//! * [`Reader`] streams any valid archive from any `Read` (stdin included), validates
//!   the header and every extent, and detects duplicate, out-of-range and (in
//!   [`Reader::finish`]) missing clusters. It accepts non-Proxmox layouts (59 used
//!   slots, other blob padding). Hostile input yields an [`Error`], never a panic;
//!   allocations are bounded (header <= 32 MiB, one extent buffer, one bit per cluster
//!   actually present).
//! * [`Index`] reads only the extent headers of a seekable, uncompressed archive and
//!   then serves any device at any offset ([`Index::read_at`], [`DeviceReader`]).
//!
//! * [`archive_disks`] is the block-run writer of `vma create` and archive export: it
//!   reads [`DiskSource`]s in runs of clusters on one read-ahead thread, skips holes a
//!   [`DataMap`] reports, and records sizes rounded up to 512 as Proxmox does.
//! * [`Extract`] writes the devices of an archive to [`DeviceSink`]s (`vma extract`);
//!   [`ReadTally`] keeps the figures `verify -v`, `extract -v` and restores print, with
//!   Proxmox's arithmetic; [`write_listing`] prints the `vma list` lines;
//!   [`read_device_map`] reads the `extract -r` device map qmrestore writes.
//!
//! * [`OutputFile`] and [`ExtractDir`] are the files of `vma create` and `vma extract`: a
//!   new archive file counts only once fsynced, an extract directory is complete (every
//!   target fsynced, then `tmp-disk-*` renamed) or removed with all it created.
//!
//! Beyond those two, the crate knows no files, and no processes or QEMU: callers implement
//! the small traits.
//! Non-goals: compression (see `vmdump-compress`), async.
//!
//! # Example
//!
//! ```
//! use vmdump_vma::{Reader, Writer, CLUSTER_SIZE};
//!
//! let mut w = Writer::with_identity(Vec::new(), [7; 16], Some(1_700_000_000));
//! w.add_config("qemu-server.conf", b"memory: 512\n").unwrap();
//! let dev = w.register_device("drive-scsi0", 100_000).unwrap();
//! w.write_cluster(dev, 1, &[1u8; 100_000 - CLUSTER_SIZE]).unwrap();
//! w.write_zero_cluster(dev, 0).unwrap();
//! let (bytes, _stats) = w.finish().unwrap();
//!
//! let mut r = Reader::new(&bytes[..]).unwrap();
//! assert_eq!(r.header().devices[0].name, "drive-scsi0");
//! let mut stored = 0;
//! while let Some(ext) = r.next_extent().unwrap() {
//!     for c in ext.clusters() {
//!         stored += c.data().len();
//!     }
//! }
//! r.finish().unwrap();
//! assert_eq!(stored, 9 * 4096);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod archive;
mod cluster_set;
mod devmap;
mod error;
mod extract;
mod files;
mod format;
mod header;
mod index;
mod reader;
mod recycle;
mod stats;
mod writer;

pub use archive::{
    archive_disks, round_to_sectors, ArchiveDisk, ArchiveProgress, DataMap, DiskSource,
};
pub use devmap::{parse_map_line, read_device_map, MapEntry};
pub use error::{Error, ErrorKind, Result};
pub use extract::{write_cluster, DeviceSink, Extract};
pub use files::{ExtractDir, OutputFile, Selection};
pub use format::{
    cluster_count, uuid_to_string, BlockInfo, BLOCKS_PER_CLUSTER, BLOCK_SIZE, CLUSTER_SIZE,
    EXTENT_HEADER_SIZE, EXTENT_MAGIC, HEADER_FIXED_SIZE, MAGIC, MAX_BLOB_LEN, MAX_CONFIGS,
    MAX_DEVICES, MAX_DEVICE_ID, MAX_EXTENT_SIZE, MAX_READER_HEADER_SIZE, MAX_WRITER_HEADER_SIZE,
    SLOTS_PER_EXTENT, VERSION, VMSTATE_NAME, WRITER_CLUSTERS_PER_EXTENT,
};
pub use header::{Config, Device, Header};
pub use index::{DeviceReader, Index, Piece};
pub use reader::{
    parse_extent_header, read_header, Cluster, DeviceReadStats, Extent, ReadStats, Reader, Run,
};
pub use recycle::Recycler;
pub use stats::{format_g3, write_listing, ReadTally};
pub use writer::{is_zero, DeviceId, DeviceStats, WriteStats, Writer};

#[cfg(test)]
mod send_check {
    fn is_send<T: Send>() {}
    #[test]
    fn writer_and_reader_are_send() {
        is_send::<crate::Writer<std::fs::File>>();
        is_send::<crate::Reader<std::fs::File>>();
        is_send::<crate::Index>();
    }
}
