//! Disk targets: where a device's clusters are written.
//!
//! Every target is freshly created and reads as zeros, so only non-zero data is written
//! ("write zeros = 0" in qmrestore's words); out-of-order data is written where it belongs.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A seekable, freshly created (zero-reading) disk image.
pub trait DiskTarget: Send {
    /// Write `data` at byte `offset` of the device. The target may keep `data` until the
    /// write completes (a shared slice, no copy).
    fn write_bytes(&mut self, data: bytes::Bytes, offset: u64) -> std::io::Result<()>;
    /// Make everything durable and close the target.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Start writeback after this many bytes were written since the last kick.
const WRITEBACK_KICK: u64 = 64 << 20;

/// A raw image file written with positional writes; unwritten ranges stay holes.
///
/// Every 64 MiB the written range is handed to the kernel for writeback
/// (`posix_fadvise(DONTNEED)` starts it without waiting and then drops the clean pages), so
/// the final fsync has little left to do and the restore does not evict the page cache. The
/// kicks run on a helper thread: submitting writeback can block on a full device queue, and
/// the writer should go on copying meanwhile.
#[derive(Debug)]
pub struct RawTarget {
    file: std::sync::Arc<File>,
    path: PathBuf,
    dirty: Option<(u64, u64)>,
    dirty_bytes: u64,
    /// The helper thread and the channel of ranges to it (none if it could not start:
    /// then nothing is kicked and the final fsync does all the writeback).
    kicker: Option<Kicker>,
}

/// The writeback helper of a [`RawTarget`]: written ranges go to `tx`, `handle` is the thread.
#[derive(Debug)]
struct Kicker {
    tx: std::sync::mpsc::SyncSender<(u64, u64)>,
    handle: std::thread::JoinHandle<()>,
}

impl RawTarget {
    /// Open an existing (freshly created, sized) raw file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| Error::Volume {
                what: "open volume",
                path: path.to_path_buf(),
                source,
            })?;
        let file = std::sync::Arc::new(file);
        // A few ranges may wait; beyond that the writer waits too (bounded dirty memory).
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, u64)>(4);
        let kicker = {
            let file = std::sync::Arc::clone(&file);
            std::thread::Builder::new()
                .name("restore-writeback".into())
                .spawn(move || {
                    for (lo, hi) in rx {
                        // Advice only: a failure costs speed, never data.
                        let _ = rustix::fs::fadvise(
                            &*file,
                            lo,
                            std::num::NonZeroU64::new(hi - lo),
                            rustix::fs::Advice::DontNeed,
                        );
                    }
                })
                .ok()
                .map(|handle| Kicker { tx, handle })
        };
        Ok(RawTarget {
            file,
            path: path.to_path_buf(),
            dirty: None,
            dirty_bytes: 0,
            kicker,
        })
    }

    fn kick_writeback(&mut self) {
        if let (Some((lo, hi)), Some(Kicker { tx, .. })) = (self.dirty.take(), &self.kicker) {
            let _ = tx.send((lo, hi));
        }
        self.dirty_bytes = 0;
    }
}

impl DiskTarget for RawTarget {
    fn write_bytes(&mut self, data: bytes::Bytes, offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(&data, offset)?;
        let end = offset + data.len() as u64;
        self.dirty = Some(match self.dirty {
            Some((lo, hi)) => (lo.min(offset), hi.max(end)),
            None => (offset, end),
        });
        self.dirty_bytes += data.len() as u64;
        if self.dirty_bytes >= WRITEBACK_KICK {
            self.kick_writeback();
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(Kicker { tx, handle }) = self.kicker.take() {
            drop(tx);
            let _ = handle.join();
        }
        self.file.sync_all().map_err(|source| Error::Volume {
            what: "sync volume",
            path: self.path.clone(),
            source,
        })
    }
}

/// NBD writes in flight per image target.
const NBD_IN_FLIGHT: usize = 8;

/// A non-raw image (qcow2, vmdk, ...) written through `qemu-storage-daemon` and the NBD
/// client (`vmdump_nbd::image`). Only non-zero data is sent: a new image reads as zeros.
/// Up to 8 writes are in flight at once (the targets of a restore never
/// overlap, so their order does not matter).
pub struct ImageTarget {
    image: vmdump_nbd::image::Image,
    path: PathBuf,
    in_flight: VecDeque<(u64, tokio::task::JoinHandle<vmdump_nbd::Result<()>>)>,
}

impl std::fmt::Debug for ImageTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageTarget")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ImageTarget {
    /// Open the (freshly created) image `path` of `format` read-write. A `preallocated`
    /// image (writes do not allocate) is written past the page cache where the file system
    /// allows it: the data then reaches the disk while the restore runs, not all at the
    /// flush on close. An allocating image stays cached: its allocating writes through
    /// `O_DIRECT` would wait for their metadata one by one.
    pub fn open(path: &Path, format: &str, preallocated: bool) -> Result<Self> {
        let image = if preallocated {
            vmdump_nbd::image::Image::open_direct(path, format)
        } else {
            vmdump_nbd::image::Image::open(path, Some(format), false)
        };
        let image = image.map_err(|e| Error::Tool {
            tool: "qemu-storage-daemon".into(),
            detail: format!("open '{}': {e}", path.display()),
        })?;
        Ok(ImageTarget {
            image,
            path: path.to_path_buf(),
            in_flight: VecDeque::new(),
        })
    }

    /// Wait for the oldest write in flight.
    fn complete_one(&mut self) -> std::io::Result<()> {
        let Some((offset, handle)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match self.image.runtime().block_on(handle) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(format!("nbd write at {offset}: {e}"))),
            Err(e) => Err(std::io::Error::other(format!(
                "nbd write at {offset}: task failed: {e}"
            ))),
        }
    }
}

impl DiskTarget for ImageTarget {
    fn write_bytes(&mut self, data: bytes::Bytes, offset: u64) -> std::io::Result<()> {
        while self.in_flight.len() >= NBD_IN_FLIGHT {
            self.complete_one()?;
        }
        let client = self
            .image
            .nbd()
            .map_err(|e| std::io::Error::other(format!("nbd: {e}")))?
            .clone();
        let handle = self
            .image
            .runtime()
            .spawn(async move { client.write(offset, data).await });
        self.in_flight.push_back((offset, handle));
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let path = self.path.clone();
        while !self.in_flight.is_empty() {
            self.complete_one().map_err(|source| Error::Volume {
                what: "write image",
                path: path.clone(),
                source,
            })?;
        }
        let ImageTarget { image, .. } = *self;
        image.close().map_err(|e| Error::Tool {
            tool: "qemu-storage-daemon".into(),
            detail: format!("close '{}': {e}", path.display()),
        })
    }
}
