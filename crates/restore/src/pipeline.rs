//! The data path: one parser thread (the caller's) reads and validates extents and hands
//! each disk's non-zero blocks, batched per extent, to that disk's writer thread over a
//! bounded channel. A batch holds slices of the reader's extent buffer, not copies (the
//! reader reuses a buffer once no slice of it is left), so memory stays at about
//! `QUEUE_DEPTH + 2` extent-sized buffers per disk whatever the archive size.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;
use vmdump_task::Cancel;

use bytes::Bytes;
use vmdump_vma::{ReadTally, Reader, BLOCK_SIZE, CLUSTER_SIZE};

use crate::error::{Error, Result};

/// Batches waiting in a disk's queue.
const QUEUE_DEPTH: usize = 4;

/// One device to restore and where its data goes.
pub struct DiskSink {
    /// Archive device id.
    pub dev_id: u8,
    /// Archive device name (for messages).
    pub name: String,
    /// Device size in bytes.
    pub size: u64,
    /// The target.
    pub target: Box<dyn vmdump_blockdev::Target>,
}

impl std::fmt::Debug for DiskSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSink")
            .field("dev_id", &self.dev_id)
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Per-device figures of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Archive device name.
    pub name: String,
    /// Device bytes covered by the archive's clusters (the device size when complete).
    pub bytes: u64,
    /// Bytes actually written (non-zero 4 KiB blocks).
    pub written: u64,
    /// Bytes in clusters that were entirely zero.
    pub sparse: u64,
}

/// Figures of a whole restore.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Per device, in archive order.
    pub devices: Vec<DiskStats>,
    /// Archive (decompressed) bytes read.
    pub archive_bytes: u64,
    /// Seconds the data phase took.
    pub seconds: f64,
    /// The figures `vma extract -v` prints, with Proxmox's arithmetic (the same as
    /// `vmdump vma verify -v` on the archive): [`ReadTally::summary`].
    pub tally: ReadTally,
}

impl Stats {
    /// Device bytes restored.
    pub fn total(&self) -> u64 {
        self.devices.iter().map(|d| d.bytes).sum()
    }
    /// Bytes written.
    pub fn written(&self) -> u64 {
        self.devices.iter().map(|d| d.written).sum()
    }
    /// Bytes in all-zero clusters.
    pub fn sparse(&self) -> u64 {
        self.devices.iter().map(|d| d.sparse).sum()
    }
}

/// A progress report, as `vma extract -v` makes them (see [`ReadTally`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataProgress {
    /// Whole percent of the devices' whole clusters read (past 100 when a size is not a
    /// multiple of 64 KiB, as in Proxmox's output).
    pub percent: u32,
    /// Bytes of the clusters read (64 KiB each).
    pub bytes: u64,
    /// Seconds since the data phase started.
    pub seconds: f64,
}

/// A disk's writes gathered from one extent: `(device offset, data)` runs, the data being
/// slices of the extent buffer (no copy).
type Batch = Vec<(u64, Bytes)>;

struct Lane {
    tx: Option<SyncSender<Batch>>,
    /// Runs of the current extent: `(device offset, start in the extent data, length)`.
    runs: Vec<(u64, usize, usize)>,
    size: u64,
    stats: DiskStats,
}

impl Lane {
    /// Add `len` bytes at extent-data offset `start` for device offset `offset`, merged with
    /// the previous run when both are contiguous.
    fn push(&mut self, offset: u64, start: usize, len: usize) {
        if let Some(last) = self.runs.last_mut() {
            if last.0 + last.2 as u64 == offset && last.1 + last.2 == start {
                last.2 += len;
                return;
            }
        }
        self.runs.push((offset, start, len));
    }

    /// Send the extent's runs as slices of `data`; false if the writer is gone (it failed).
    fn flush(&mut self, data: &Bytes) -> bool {
        if self.runs.is_empty() {
            return true;
        }
        let batch: Batch = self
            .runs
            .drain(..)
            .map(|(offset, start, len)| (offset, data.slice(start..start + len)))
            .collect();
        match &self.tx {
            Some(tx) => tx.send(batch).is_ok(),
            None => false,
        }
    }
}

/// Run the data phase: read every extent of `reader`, write each sink's data, check that the
/// archive is complete, and make the targets durable. On any error (corrupt archive, write
/// failure, `cancel` set) the writers are stopped and the first cause is returned.
pub fn run<R: Read>(
    reader: Reader<R>,
    sinks: Vec<DiskSink>,
    cancel: &Cancel,
    progress: &mut dyn FnMut(DataProgress),
) -> Result<Stats> {
    let start = Instant::now();
    // As `vma extract` (which qmrestore runs) counts: every device but the vmstate stream.
    let mut tally = ReadTally::new(reader.header(), |d| !d.is_vmstate());
    let abort = AtomicBool::new(false);
    let mut route = [usize::MAX; 256];
    for (i, s) in sinks.iter().enumerate() {
        route[usize::from(s.dev_id)] = i;
    }

    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(sinks.len());
        let mut handles = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let (tx, rx) = sync_channel::<Batch>(QUEUE_DEPTH);
            lanes.push(Lane {
                tx: Some(tx),
                runs: Vec::with_capacity(64),
                size: sink.size,
                stats: DiskStats {
                    name: sink.name.clone(),
                    ..Default::default()
                },
            });
            let abort = &abort;
            let handle = std::thread::Builder::new()
                .name(format!("restore-{}", sink.name))
                .spawn_scoped(scope, move || write_lane(sink, rx, abort))
                .map_err(|e| Error::Internal(format!("spawn writer thread: {e}")));
            handles.push(handle);
        }

        let parsed = parse(
            reader, &mut lanes, &route, &mut tally, cancel, start, progress,
        );
        if parsed.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let mut device_stats = Vec::with_capacity(lanes.len());
        for lane in &mut lanes {
            lane.tx = None;
            device_stats.push(std::mem::take(&mut lane.stats));
        }
        drop(lanes);
        // A writer failure is the root cause of a parser "writer gone" stop: report it first.
        let mut writer_error = None;
        for h in handles {
            let r = match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Internal("writer thread panicked".into()))),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                abort.store(true, Ordering::Relaxed);
                writer_error.get_or_insert(e);
            }
        }
        match (parsed, writer_error) {
            (Err(Error::Internal(_)), Some(w)) => Err(w),
            (Err(e), _) => Err(e),
            (Ok(_), Some(w)) => Err(w),
            (Ok(archive_bytes), None) => Ok(Stats {
                devices: device_stats,
                archive_bytes,
                seconds: start.elapsed().as_secs_f64(),
                tally,
            }),
        }
    })
}

/// The parser loop; returns the archive bytes read.
fn parse<R: Read>(
    mut reader: Reader<R>,
    lanes: &mut [Lane],
    route: &[usize; 256],
    tally: &mut ReadTally,
    cancel: &Cancel,
    start: Instant,
    progress: &mut dyn FnMut(DataProgress),
) -> Result<u64> {
    let header = reader.header().clone();
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let Some(ext) = reader.next_extent()? else {
            break;
        };
        for c in ext.clusters() {
            if let Some(percent) = header.device(c.dev_id).and_then(|d| tally.record(&c, d)) {
                progress(DataProgress {
                    percent: percent as u32,
                    bytes: tally.bytes_read(),
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            let Some(lane) = lanes.get_mut(route[usize::from(c.dev_id)]) else {
                continue; // vmstate or a skipped device
            };
            let base = c.device_offset();
            let clen = (lane.size - base).min(CLUSTER_SIZE as u64);
            lane.stats.bytes += clen;
            let mut wrote = 0u64;
            let at = c.data_offset();
            for run in c.runs(lane.size) {
                let Some(data) = run.data else { continue };
                // Our writer never stores zero blocks; others may. The target reads as zeros
                // already, so they are skipped (and stay holes).
                let mut k = 0usize;
                while k < run.len {
                    let len = (run.len - k).min(BLOCK_SIZE);
                    let block = data.start + k;
                    if !vmdump_vma::is_zero(&c.data()[block..block + len]) {
                        lane.push(run.offset + k as u64, at + block, len);
                        wrote += len as u64;
                    }
                    k += len;
                }
            }
            lane.stats.written += wrote;
            if wrote == 0 {
                lane.stats.sparse += clen;
            }
        }
        let data = ext.bytes();
        for lane in lanes.iter_mut() {
            if !lane.flush(data) {
                return Err(Error::Internal("writer gone".into()));
            }
        }
    }
    let archive_bytes = reader.offset();
    // Completeness: every cluster of every device exactly once.
    let devices: Vec<u8> = route
        .iter()
        .enumerate()
        .filter(|(_, &r)| r != usize::MAX)
        .map(|(id, _)| id as u8)
        .collect();
    reader.finish_for(|id| devices.contains(&id))?;
    Ok(archive_bytes)
}

fn write_lane(sink: DiskSink, rx: Receiver<Batch>, abort: &AtomicBool) -> Result<()> {
    let DiskSink {
        name, mut target, ..
    } = sink;
    for batch in rx {
        if abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (offset, data) in batch {
            target
                .write_at(data, offset)
                .map_err(|source| Error::Disk {
                    what: "write",
                    device: name.clone(),
                    source: Box::new(source),
                })?;
        }
    }
    if abort.load(Ordering::Relaxed) {
        return Ok(());
    }
    target.finish().map_err(|source| Error::Disk {
        what: "write",
        device: name,
        source: Box::new(source),
    })
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
