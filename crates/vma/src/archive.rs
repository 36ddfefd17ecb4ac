//! Archiving disks: the block-run writer that reads disks in runs of clusters (holes are
//! recorded without being read) and feeds them to a [`Writer`], as `vma create` does.
//!
//! Device sizes are recorded rounded up to a multiple of 512, as Proxmox's `vma create`
//! records them (QEMU reports whole sectors), so that every archive restores byte-exactly
//! with Proxmox's own tools; the bytes past a disk's end read as zeros.

use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::format::{CLUSTER_SIZE, SLOTS_PER_EXTENT};
use crate::recycle::Recycler;
use crate::writer::{DeviceId, Writer};

/// A disk to archive: its size and random reads. Implementations live with the caller
/// (raw files and block devices, QEMU images served over NBD, memory).
pub trait DiskSource: Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from byte `offset` (the range lies inside the disk).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Where the data lies, so that holes are not read; `None` when unknown (everything is
    /// read; zero blocks are still detected).
    fn data_map(&self) -> Option<Box<dyn DataMap + '_>> {
        None
    }
}

/// Where a disk's data lies. Queried with non-empty ranges of at most one cluster, inside the
/// disk, in ascending order of their start; the same range may come twice in a row (the
/// cluster that ends a run of one kind is asked again as the first of the next run), never
/// a range before the last one.
pub trait DataMap {
    /// True if all of `[start, end)` is known to read as zeros.
    fn is_hole(&mut self, start: u64, end: u64) -> bool;
}

/// `size` rounded up to whole 512-byte sectors: the size an archive records for a disk (as
/// Proxmox's `vma create` and QEMU's block layer report it), and the size a restore
/// creates and names in the restored config.
pub fn round_to_sectors(size: u64) -> u64 {
    size.div_ceil(512) * 512
}

/// A disk and the name of its archive device.
#[derive(Clone, Copy)]
pub struct ArchiveDisk<'a> {
    /// Device name, e.g. `drive-scsi0`.
    pub name: &'a str,
    /// The disk.
    pub source: &'a dyn DiskSource,
}

impl std::fmt::Debug for ArchiveDisk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveDisk")
            .field("name", &self.name)
            .field("size", &self.source.size())
            .finish()
    }
}

/// Progress of [`archive_disks`], reported at every new whole percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveProgress {
    /// Whole percent of the device bytes done.
    pub percent: u64,
    /// Device bytes done.
    pub transferred: u64,
    /// Device bytes in all.
    pub total: u64,
    /// Zero bytes found so far (whole 4 KiB blocks, as Proxmox counts them).
    pub zero_bytes: u64,
}

/// A run of clusters of one device: read data, or a hole (all zero, not read).
struct Chunk {
    dev: usize,
    first: u64,
    count: u64,
    data: Option<Bytes>,
}

/// Store `configs` and every cluster of every disk in `w`, reading up to `read_clusters`
/// clusters per request on a read-ahead thread (so disk reads overlap archive writes).
/// The writer takes slices of the read buffers instead of copies; a buffer is reused once
/// nothing refers to it any more. Does not call [`Writer::finish`].
pub fn archive_disks<W: Write>(
    w: &mut Writer<W>,
    configs: &[(String, Vec<u8>)],
    disks: &[ArchiveDisk<'_>],
    read_clusters: u64,
    mut progress: impl FnMut(ArchiveProgress),
) -> Result<()> {
    for (name, data) in configs {
        w.add_config(name, data)?;
    }
    let sizes: Vec<u64> = disks
        .iter()
        .map(|d| round_to_sectors(d.source.size()))
        .collect();
    let ids = disks
        .iter()
        .zip(&sizes)
        .map(|(d, &size)| w.register_device(d.name, size))
        .collect::<Result<Vec<DeviceId>>>()?;
    let total: u64 = sizes.iter().sum();
    let mut transferred = 0u64;
    let mut zero_bytes = 0u64;
    let mut last_percent = None;
    let (tx, rx) = sync_channel::<Result<Chunk>>(4);
    let (pool_tx, pool_rx) = channel::<BytesMut>();
    // An extent spans at most 59 clusters, so the writer never holds more read buffers.
    let mut held = Recycler::new(SLOTS_PER_EXTENT);
    let sizes = &sizes;
    std::thread::scope(|scope| -> Result<()> {
        // Owned here so that an early error drops it and unblocks the reader.
        let pool_tx = pool_tx;
        scope.spawn(move || read_ahead(disks, sizes, read_clusters.max(1), &tx, &pool_rx));
        for chunk in rx {
            let chunk = chunk?;
            let size = sizes[chunk.dev];
            for k in 0..chunk.count {
                let c = chunk.first + k;
                let start = c * CLUSTER_SIZE as u64;
                let len = (size.min(start + CLUSTER_SIZE as u64) - start) as usize;
                match &chunk.data {
                    None => {
                        w.write_zero_cluster(ids[chunk.dev], c)?;
                        zero_bytes += CLUSTER_SIZE as u64;
                    }
                    Some(buf) => {
                        let off = k as usize * CLUSTER_SIZE;
                        zero_bytes +=
                            w.write_cluster_shared(ids[chunk.dev], c, &buf.slice(off..off + len))?;
                    }
                }
                transferred += len as u64;
                let percent = transferred * 100 / total.max(1);
                if last_percent != Some(percent) {
                    last_percent = Some(percent);
                    progress(ArchiveProgress {
                        percent,
                        transferred,
                        total,
                        zero_bytes,
                    });
                }
            }
            if let Some(buf) = chunk.data {
                held.hold(buf);
            }
            while let Some(free) = held.reclaim() {
                let _ = pool_tx.send(free);
            }
        }
        Ok(())
    })
}

/// Produce the clusters of every disk in order; stops at the first error or when the
/// consumer hangs up.
fn read_ahead(
    disks: &[ArchiveDisk<'_>],
    sizes: &[u64],
    read_clusters: u64,
    tx: &SyncSender<Result<Chunk>>,
    pool: &Receiver<BytesMut>,
) {
    for (dev, (disk, &size)) in disks.iter().zip(sizes).enumerate() {
        let source = disk.source;
        // The disk's own end; the archived size may be up to 511 bytes more (zeros).
        let disk_end = source.size();
        let mut map = source.data_map();
        let mut is_hole = |start: u64, end: u64| -> bool {
            let end = end.min(disk_end);
            end <= start || map.as_mut().is_some_and(|m| m.is_hole(start, end))
        };
        let clusters = size.div_ceil(CLUSTER_SIZE as u64);
        let cluster_end = |c: u64| size.min((c + 1) * CLUSTER_SIZE as u64);
        let mut c = 0u64;
        while c < clusters {
            let start = c * CLUSTER_SIZE as u64;
            let hole = is_hole(start, cluster_end(c));
            // Extend the run while clusters stay of the same kind.
            let mut n = 1u64;
            while c + n < clusters
                && n < read_clusters
                && is_hole((c + n) * CLUSTER_SIZE as u64, cluster_end(c + n)) == hole
            {
                n += 1;
            }
            let chunk = if hole {
                Ok(Chunk {
                    dev,
                    first: c,
                    count: n,
                    data: None,
                })
            } else {
                // A recycled buffer, or a new one while the writer still holds them all
                // (bounded: the channel depth plus the buffers one extent spans).
                let mut buf = pool.try_recv().unwrap_or_default();
                let len = (cluster_end(c + n - 1) - start) as usize;
                buf.resize(len, 0);
                let readable = (disk_end.min(start + len as u64) - start) as usize;
                buf[readable..].fill(0);
                match source.read_exact_at(&mut buf[..readable], start) {
                    Ok(()) => Ok(Chunk {
                        dev,
                        first: c,
                        count: n,
                        data: Some(buf.freeze()),
                    }),
                    Err(source) => Err(Error::DiskRead {
                        device: disk.name.to_string(),
                        offset: start,
                        source,
                    }),
                }
            };
            let failed = chunk.is_err();
            if tx.send(chunk).is_err() || failed {
                return;
            }
            c += n;
        }
    }
}
