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
use crate::output::Output;
use vmdump_vma::{is_zero, DeviceId, Writer};

/// Clusters in flight between the NBD target and the writer (64 × 64 KiB = 4 MiB).
pub const CHANNEL_CLUSTERS: usize = 64;

/// One message to the writer thread.
#[derive(Debug)]
pub struct Msg {
    /// VMA dev_id (1-based, as registered).
    pub dev: u8,
    /// The cluster.
    pub cluster: Cluster,
}

/// Counters and the failure flag shared by the target, the writer and the control task.
#[derive(Debug, Default)]
pub struct Shared {
    transferred: AtomicU64,
    zero: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
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

    /// The first failure's message.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Marks the backup failed; the first message wins.
    pub fn fail(&self, msg: impl Into<String>) {
        if let Ok(mut e) = self.error.lock() {
            if e.is_none() {
                let msg = msg.into();
                tracing::error!(error = %msg, "backup failed");
                *e = Some(msg);
            }
        }
        self.failed.store(true, Ordering::Release);
    }

    pub(crate) fn count(&self, bytes: u64, zero: bool) {
        self.transferred.fetch_add(bytes, Ordering::Relaxed);
        if zero {
            self.zero.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Handle of the writer thread.
#[derive(Debug)]
pub struct WriterThread {
    handle: JoinHandle<Option<Output>>,
}

/// Device names by dev_id, for error messages.
pub type DeviceNames = Vec<String>;

impl WriterThread {
    /// Starts the thread. It ends when every sender is dropped.
    pub fn spawn(
        mut writer: Writer<Output>,
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
                    if !ok || shared.failed() {
                        ok = false;
                        continue;
                    }
                    let Msg { dev, cluster } = msg;
                    let zero = cluster.data.as_deref().is_none_or(is_zero);
                    let written = match ids.get(usize::from(dev).wrapping_sub(1)) {
                        None => Err(vmdump_vma::Error::Usage(format!("unknown device {dev}"))),
                        Some(&id) => match cluster.data.as_deref() {
                            Some(data) if !zero => {
                                writer.write_cluster(id, cluster.num, data).map(|_| ())
                            }
                            _ => writer.write_zero_cluster(id, cluster.num),
                        },
                    };
                    match written {
                        Ok(()) => shared.count(cluster.len as u64, zero),
                        Err(e) => {
                            let name = names
                                .get(usize::from(dev).wrapping_sub(1))
                                .map_or("?", String::as_str);
                            shared.fail(format!(
                                "device '{name}' cluster {}: {}",
                                cluster.num,
                                error_chain(&e)
                            ));
                            ok = false;
                        }
                    }
                }
                if !ok || shared.failed() {
                    // Dropping the writer drops the encoder; the caller deletes the file.
                    return None;
                }
                match writer.finish() {
                    Ok((out, _stats)) => Some(out),
                    Err(e) => {
                        shared.fail(format!("finishing the archive: {}", error_chain(&e)));
                        None
                    }
                }
            })?;
        Ok(Self { handle })
    }

    /// Waits for the thread; `Some(output)` when the VMA stream is complete (the caller still
    /// has to finish the compressor and fsync).
    pub fn join(self) -> Option<Output> {
        self.handle.join().unwrap_or(None)
    }
}

/// `error: cause: cause` for messages that end up in the task log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
