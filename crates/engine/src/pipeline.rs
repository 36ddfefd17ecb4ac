//! The data path between the NBD target and the archive: clusters go through one bounded
//! channel to one writer thread that owns the VMA writer, the compressor and the file.
//!
//! Backpressure: when the archive side is slower than QEMU, the channel fills up, the NBD
//! target stops reading requests, and QEMU's job (and copy-before-write on guest writes) waits.
//!
//! Failure: the first archive error is recorded in [`Shared`] and marks the backup failed; from
//! then on the thread keeps draining the channel and discards everything, so the NBD target
//! keeps acknowledging and the guest is never stalled or failed by our problems.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::error::Failure;
use crate::output::ArchiveFile;
use vmdump_vma::{is_zero, DeviceId, Writer};

/// Messages in flight between the NBD target and the writer: runs of clusters, each at most
/// one QEMU request (1 MiB), so at most 16 MiB of data.
pub const CHANNEL_CLUSTERS: usize = 16;

/// One message to the writer thread.
#[derive(Debug)]
pub struct Msg {
    /// VMA dev_id (1-based, as registered).
    pub dev: u8,
    /// The run of clusters (usually one NBD request's worth).
    pub cluster: Cluster,
}

/// Counters and the failure flag shared by the target, the writer and the control task.
#[derive(Debug, Default)]
pub struct Shared {
    /// Bytes handed to the writer (counted as they enter the channel).
    handed: AtomicU64,
    transferred: AtomicU64,
    zero: AtomicU64,
    failed: AtomicBool,
    /// Set when the control task gives up (cancel, QEMU error): the writer drops the archive
    /// without finishing it, so nothing reports the missing rest as a fault of its own.
    abandoned: AtomicBool,
    error: Mutex<Option<Arc<Failure>>>,
}

impl Shared {
    /// Bytes received from QEMU (clusters handed to the writer).
    pub fn transferred(&self) -> u64 {
        self.transferred.load(Ordering::Relaxed)
    }

    /// Of those, bytes of all-zero clusters.
    pub fn zero(&self) -> u64 {
        self.zero.load(Ordering::Relaxed)
    }

    /// Whether the backup has failed (archive error, protocol error, cancel).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The first failure.
    pub fn error(&self) -> Option<Arc<Failure>> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Counts `bytes` handed to the writer thread (not yet in [`Shared::transferred`]).
    pub(crate) fn hand(&self, bytes: u64) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Waits (at most `wait`) until the writer has taken in everything handed to it, so the
    /// counters are final; false on timeout or failure.
    pub async fn drained(&self, wait: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while self.transferred() < self.handed.load(Ordering::Relaxed) {
            if self.failed() || start.elapsed() >= wait {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// Marks the backup failed; the first failure wins (it is reported by the control task).
    pub fn fail(&self, failure: Failure) {
        if let Ok(mut e) = self.error.lock() {
            if e.is_none() {
                tracing::debug!(error = %failure, "archive side failed");
                *e = Some(Arc::new(failure));
            }
        }
        self.failed.store(true, Ordering::Release);
    }

    /// The control task gives up on this archive: the writer stops without finishing it.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    pub(crate) fn count(&self, bytes: u64, zero: bool) {
        self.transferred.fetch_add(bytes, Ordering::Relaxed);
        if zero {
            self.zero.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Writes the clusters of `run` into the archive (data as slices of the NBD payload, kept
/// until their extent is written: no copy) and counts them; on failure, the cluster that
/// failed.
fn write_run(
    writer: &mut Writer<ArchiveFile>,
    id: DeviceId,
    run: &Cluster,
    shared: &Shared,
) -> Result<(), (u64, vmdump_vma::Error)> {
    if run.data.is_none() {
        writer
            .write_zero_clusters(id, run.num, run.count())
            .map_err(|e| (run.num, e))?;
        shared.count(run.len as u64, true);
        return Ok(());
    }
    for (num, len, data) in run.each() {
        let data = data.expect("a run with data has data for every cluster");
        let zero = is_zero(&data);
        let res = if zero {
            writer.write_zero_cluster(id, num)
        } else {
            writer.write_cluster_shared(id, num, &data).map(|_| ())
        };
        res.map_err(|e| (num, e))?;
        shared.count(len as u64, zero);
    }
    Ok(())
}

/// Handle of the writer thread.
#[derive(Debug)]
pub struct WriterThread {
    handle: JoinHandle<Option<ArchiveFile>>,
}

/// Device names by dev_id, for error messages.
pub type DeviceNames = Vec<String>;

impl WriterThread {
    /// Starts the thread. It ends when every sender is dropped.
    pub fn spawn(
        mut writer: Writer<ArchiveFile>,
        mut rx: mpsc::Receiver<Msg>,
        shared: Arc<Shared>,
        names: DeviceNames,
        ids: Vec<DeviceId>,
    ) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new()
            .name("vma-writer".into())
            .spawn(move || {
                let mut ok = true;
                while let Some(msg) = rx.blocking_recv() {
                    if !ok || shared.failed() || shared.abandoned() {
                        ok = false;
                        continue;
                    }
                    let Msg { dev, cluster } = msg;
                    let written = match ids.get(usize::from(dev).wrapping_sub(1)) {
                        None => Err((
                            cluster.num,
                            vmdump_vma::Error::Usage(format!("unknown device {dev}")),
                        )),
                        Some(&id) => write_run(&mut writer, id, &cluster, &shared),
                    };
                    if let Err((num, e)) = written {
                        let name = names
                            .get(usize::from(dev).wrapping_sub(1))
                            .map_or("?", String::as_str);
                        shared.fail(Failure::Write {
                            device: name.to_string(),
                            cluster: num,
                            source: e,
                        });
                        ok = false;
                    }
                }
                if !ok || shared.failed() || shared.abandoned() {
                    // Dropping the writer drops the encoder; the caller deletes the file.
                    return None;
                }
                match writer.finish() {
                    Ok((out, _stats)) => Some(out),
                    Err(e) => {
                        shared.fail(Failure::Finish(e));
                        None
                    }
                }
            })?;
        Ok(Self { handle })
    }

    /// Waits for the thread; `Some(output)` when the VMA stream is complete (the caller still
    /// has to finish the compressor and fsync).
    pub fn join(self) -> Option<ArchiveFile> {
        self.handle.join().unwrap_or(None)
    }
}
