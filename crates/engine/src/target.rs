//! The NBD target QEMU's backup jobs write to: `vmdump-nbd`'s server on one unix socket, one
//! export per disk (export name = the QEMU drive id, e.g. `drive-scsi0`, size = the disk's
//! size), each feeding the cluster assembler and the writer thread.
//!
//! **A request is never failed.** A write QEMU sends may be a copy-before-write on the guest's
//! I/O path; failing it would fail the guest's write (QEMU 7.2's backup filter breaks guest
//! writes on copy errors). Whatever goes wrong on our side is recorded in [`Shared`] and the
//! request is acknowledged; the control task sees the failure and cancels the jobs.
//!
//! The commit point of a disk is its connection ending with `DISC` (QEMU sends `FLUSH` +
//! `DISC` when the target node is deleted); a connection that ends any other way before that
//! fails the backup.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use vmdump_nbd::export::{Capabilities, WriteFlags, ZeroFlags};
use vmdump_nbd::server::{CloseReason, Event};
use vmdump_nbd::{Server, ServerOptions};

use crate::cluster::{Assembler, Cluster, CLUSTER_SIZE};
use crate::error::Failure;
use crate::pipeline::{Msg, Shared};

/// One disk the target exports.
#[derive(Debug)]
pub struct DiskExport {
    /// Export name (the QEMU drive id).
    pub name: String,
    /// VMA dev_id of the disk.
    pub dev: u8,
    /// Disk size in bytes.
    pub size: u64,
    assembler: Mutex<Assembler>,
    /// Zero runs accepted but not handed to the writer yet. QEMU sends a hole as 1 MiB
    /// `WRITE_ZEROES` from many workers, a little out of order; a run that touches a held one
    /// grows it, so a hole costs a few messages, not one per request. Held runs are sent when
    /// more than [`HELD_ZERO_RUNS`] pile up, on `FLUSH` and on `DISC`.
    zeros: Mutex<Vec<Cluster>>,
    /// Set once the client sent `DISC` (after `FLUSH`): the commit point of this disk.
    closed: watch::Sender<bool>,
    /// A `sync=top` job's progress (bytes, whole clusters) once it is pending: the clusters
    /// it did not send were never allocated and are recorded as zero at `DISC`.
    copied: Mutex<Option<u64>>,
    /// Bytes recorded as zero at `DISC` because the `sync=top` job skipped them.
    unallocated: AtomicU64,
}

impl DiskExport {
    /// An export of a disk of `size` bytes.
    pub fn new(name: impl Into<String>, dev: u8, size: u64) -> Self {
        Self {
            name: name.into(),
            dev,
            size,
            assembler: Mutex::new(Assembler::new(size)),
            zeros: Mutex::new(Vec::new()),
            closed: watch::channel(false).0,
            copied: Mutex::new(None),
            unallocated: AtomicU64::new(0),
        }
    }

    /// Bytes the `sync=top` job skipped (never allocated) and the archive records as zero.
    pub fn unallocated(&self) -> u64 {
        self.unallocated.load(Ordering::Relaxed)
    }

    /// Records that the `sync=top` job of this disk copied `bytes` (its final progress): at
    /// `DISC` exactly that many clusters must have arrived, and the others become zero.
    pub fn expect_copied(&self, bytes: u64) {
        if let Ok(mut c) = self.copied.lock() {
            *c = Some(bytes);
        }
    }

    /// `None` when every cluster arrived, else the first missing cluster.
    pub fn first_missing(&self) -> Option<u64> {
        self.assembler.lock().map_or(Some(0), |a| a.first_missing())
    }

    /// Whether the client disconnected cleanly (`DISC`).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// The cluster sender, shared by every export and taken away on shutdown (so the writer
/// thread ends even if a connection task outlives the server).
type Sender = Arc<Mutex<Option<mpsc::Sender<Msg>>>>;

/// The running NBD target (one server, one export per disk).
#[derive(Debug)]
pub struct NbdTarget {
    socket: PathBuf,
    exports: Arc<Vec<Arc<DiskExport>>>,
    tx: Sender,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl NbdTarget {
    /// Binds `socket` and serves `exports`. Clusters go to `tx`; failures to `shared`.
    pub async fn start(
        socket: &Path,
        exports: Vec<Arc<DiskExport>>,
        tx: mpsc::Sender<Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self, vmdump_nbd::Error> {
        let tx: Sender = Arc::new(Mutex::new(Some(tx)));
        // QEMU's NBD client keeps at most 16 requests (1 MiB each) in flight; bound the
        // payload buffered per connection so memory stays small with many disks.
        let mut server = Server::new(ServerOptions {
            max_buffered: 16 << 20,
            // Our writes only hand runs on (or wait for the writer: backpressure).
            inline_writes: true,
            ..ServerOptions::default()
        });
        for e in &exports {
            server.add_export(
                e.name.clone(),
                ExportSink {
                    export: Arc::clone(e),
                    tx: Arc::clone(&tx),
                    shared: Arc::clone(&shared),
                },
            );
        }
        let mut handle = server.serve_unix(socket).await?;
        let exports = Arc::new(exports);
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let task = {
            let exports = Arc::clone(&exports);
            let tx_events = Arc::clone(&tx);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => {
                            handle.shutdown().await;
                            return;
                        }
                        ev = handle.next_event() => match ev {
                            None => return,
                            Some(Event::Disconnected(d)) => {
                                let Some(e) = d
                                    .export
                                    .as_deref()
                                    .and_then(|n| exports.iter().find(|e| e.name == n))
                                else {
                                    continue;
                                };
                                if d.reason == CloseReason::Disc {
                                    fill_unallocated(e, &tx_events, &shared).await;
                                    send_zeros(e, &tx_events, &shared).await;
                                    e.closed.send_replace(true);
                                } else if !e.is_closed() {
                                    shared.fail(Failure::Disconnected {
                                        device: e.name.clone(),
                                        reason: format!("{:?}", d.reason),
                                    });
                                }
                            }
                            Some(_) => {}
                        }
                    }
                }
            })
        };
        Ok(Self {
            socket: socket.to_path_buf(),
            exports,
            tx,
            stop: Some(stop),
            task,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The exports.
    pub fn exports(&self) -> &[Arc<DiskExport>] {
        &self.exports
    }

    /// Waits (at most `wait`) until every export saw `DISC`.
    pub async fn wait_closed(&self, wait: Duration) -> bool {
        let all = async {
            for e in self.exports.iter() {
                let mut rx = e.closed.subscribe();
                if rx.wait_for(|c| *c).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(wait, all).await.unwrap_or(false)
    }

    /// Stops the server (in-flight requests finish), then drops the cluster sender so the
    /// writer thread can end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
        self.task.abort();
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The `vmdump-nbd` export of one disk: assemble, hand clusters to the writer, always succeed.
struct ExportSink {
    export: Arc<DiskExport>,
    tx: Sender,
    shared: Arc<Shared>,
}

impl ExportSink {
    async fn accept(&self, offset: u64, data: Option<&Bytes>, len: u64) {
        if self.shared.failed() {
            return;
        }
        // QEMU's requests (up to 1 MiB) are cluster-aligned: one run each, rarely more.
        let mut ready: Vec<Cluster> = Vec::with_capacity(2);
        let res = match self.export.assembler.lock() {
            Ok(mut a) => match data {
                Some(d) => a.write(offset, d, |c| ready.push(c)),
                None => a.write_zeroes(offset, len, |c| ready.push(c)),
            },
            Err(_) => {
                // Only a panic while holding the lock poisons it; the writer is gone then.
                self.shared.fail(Failure::WriterStopped);
                return;
            }
        };
        if let Err(e) = res {
            self.shared.fail(Failure::OutOfRange {
                device: self.export.name.clone(),
                offset: e.offset,
                len: e.len,
                size: e.size,
            });
            return;
        }
        // Zero runs join the held ones; data runs go out at once.
        let mut send = Vec::with_capacity(ready.len() + 1);
        if let Ok(mut zeros) = self.export.zeros.lock() {
            for run in ready {
                if run.data.is_some() {
                    send.push(run);
                } else if let Some(full) = hold_zeros(&mut zeros, run) {
                    send.push(full);
                }
            }
        }
        for cluster in send {
            if !send_run(&self.export, cluster, &self.tx, &self.shared).await {
                return;
            }
        }
    }
}

/// Longest zero run held back (bytes); a longer hole goes out in pieces of about this size.
const MAX_ZERO_RUN: usize = 1 << 30;
/// Zero runs held back per disk.
const HELD_ZERO_RUNS: usize = 32;

/// Adds the zero run `run` to `held` (joined to a run it continues or precedes); returns a
/// run to send now: one grown to [`MAX_ZERO_RUN`], or the oldest when too many are held.
fn hold_zeros(held: &mut Vec<Cluster>, run: Cluster) -> Option<Cluster> {
    let end = |c: &Cluster| c.num + c.count();
    // Only the device's last cluster is short, and nothing follows it: every run that is
    // continued by another is whole clusters.
    let at = held
        .iter()
        .position(|h| end(h) == run.num || end(&run) == h.num);
    let i = match at {
        Some(i) => {
            let h = &mut held[i];
            if end(h) == run.num {
                h.len += run.len;
            } else {
                h.num = run.num;
                h.len += run.len;
            }
            // The grown run may now touch another held run.
            let (num, e) = (held[i].num, end(&held[i]));
            if let Some(j) = held
                .iter()
                .enumerate()
                .position(|(j, o)| j != i && (end(o) == num || e == o.num))
            {
                let other = held.swap_remove(j);
                let i = if i == held.len() { j } else { i };
                let h = &mut held[i];
                h.num = h.num.min(other.num);
                h.len += other.len;
                i
            } else {
                i
            }
        }
        None => {
            held.push(run);
            held.len() - 1
        }
    };
    if held[i].len >= MAX_ZERO_RUN {
        return Some(held.swap_remove(i));
    }
    (held.len() > HELD_ZERO_RUNS).then(|| held.remove(0))
}

/// Hands `cluster` of `export` to the writer; false (and the backup failed) if it is gone.
async fn send_run(export: &DiskExport, cluster: Cluster, tx: &Sender, shared: &Shared) -> bool {
    let Some(tx) = tx.lock().ok().and_then(|t| t.clone()) else {
        shared.fail(Failure::WriterStopped);
        return false;
    };
    shared.hand(cluster.len as u64);
    let msg = Msg {
        dev: export.dev,
        cluster,
    };
    if tx.send(msg).await.is_err() {
        shared.fail(Failure::WriterStopped);
        return false;
    }
    true
}

/// At `DISC` of a disk a `sync=top` job copied: checks that every cluster the job copied
/// arrived, then hands the clusters it skipped (never allocated, so zero at the backup's
/// instant) to the writer as zero runs. A job that skipped nothing (a raw image) needs no
/// fill.
async fn fill_unallocated(export: &DiskExport, tx: &Sender, shared: &Shared) {
    let Some(copied) = export.copied.lock().ok().and_then(|c| *c) else {
        return;
    };
    let mut runs = Vec::new();
    let arrived = match export.assembler.lock() {
        Ok(mut a) => {
            let arrived = a.done();
            if arrived == copied.div_ceil(CLUSTER_SIZE) {
                a.fill_missing(MAX_ZERO_RUN, |c| runs.push(c));
                None
            } else {
                Some(arrived)
            }
        }
        Err(_) => {
            shared.fail(Failure::WriterStopped);
            return;
        }
    };
    if let Some(arrived) = arrived {
        shared.fail(Failure::Lost {
            device: export.name.clone(),
            copied: copied.div_ceil(CLUSTER_SIZE),
            arrived,
        });
        return;
    }
    let bytes = runs.iter().map(|r| r.len as u64).sum();
    export.unallocated.store(bytes, Ordering::Relaxed);
    for run in runs {
        if !send_run(export, run, tx, shared).await {
            return;
        }
    }
}

/// Sends the zero run `export` holds back, if any (on `FLUSH` and `DISC`).
async fn send_zeros(export: &DiskExport, tx: &Sender, shared: &Shared) {
    let held = export
        .zeros
        .lock()
        .map(|mut z| std::mem::take(&mut *z))
        .unwrap_or_default();
    for run in held {
        if !send_run(export, run, tx, shared).await {
            return;
        }
    }
}

impl vmdump_nbd::Export for ExportSink {
    fn size(&self) -> u64 {
        self.export.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            write_zeroes: true,
            flush: true,
            trim: true,
            fua: true,
            ..Capabilities::default()
        }
    }

    async fn write(&self, offset: u64, data: Bytes, _flags: WriteFlags) -> io::Result<()> {
        self.accept(offset, Some(&data), data.len() as u64).await;
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u32, _flags: ZeroFlags) -> io::Result<()> {
        self.accept(offset, None, u64::from(len)).await;
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        // Everything accepted so far reaches the writer before the flush is acknowledged.
        send_zeros(&self.export, &self.tx, &self.shared).await;
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u32) -> io::Result<()> {
        // QEMU's backup never trims its target; a trim must not lose point-in-time data.
        Ok(())
    }
}

/// The NBD target and the writer thread against a second real NBD client: `qemu-img convert`
/// writes a disk whose size is not a multiple of 64 KiB into the target; the archive read back
/// by dissect.archive must equal the source.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Result;
    use tokio::sync::mpsc;
    use vmdump_testkit::{dissect_devices, run, sha256_file};

    use super::{DiskExport, NbdTarget, CLUSTER_SIZE};
    use crate::error::Failure;
    use crate::output::ArchiveFile;
    use crate::pipeline::{Shared, WriterThread, CHANNEL_CLUSTERS};

    #[test]
    fn zero_runs_out_of_order_join_into_few_messages() {
        use super::{hold_zeros, HELD_ZERO_RUNS};
        use crate::cluster::{Cluster, CLUSTER_SIZE};
        // A 64 MiB + 1000 byte hole as QEMU sends it: 1 MiB runs, a little out of order
        // (pairs swapped, every fifth run late), the short last cluster alone.
        let mb = 16u64;
        let mut order: Vec<u64> = (0..64).collect();
        for p in order.chunks_mut(2) {
            p.swap(0, 1);
        }
        let late: Vec<u64> = order.iter().copied().filter(|n| n % 5 == 0).collect();
        order.retain(|n| n % 5 != 0);
        order.extend(late);
        let mut held = Vec::new();
        let mut sent = Vec::new();
        let mut run = |num: u64, len: usize, held: &mut Vec<Cluster>| {
            let c = Cluster {
                num,
                data: None,
                len,
            };
            sent.extend(hold_zeros(held, c));
            assert!(held.len() <= HELD_ZERO_RUNS);
        };
        for n in order {
            run(n * mb, (mb * CLUSTER_SIZE) as usize, &mut held);
        }
        run(64 * mb, 1000, &mut held);
        sent.append(&mut held);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((sent[0].num, sent[0].count()), (0, 64 * mb + 1));
        assert_eq!(sent[0].len as u64, 64 * mb * CLUSTER_SIZE + 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qemu_img_convert_into_the_target() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let src = tmp.path().join("src.raw");
        let size: u64 = 5 * 1024 * 1024 + 1536;
        std::fs::File::create(&src)?.set_len(size)?;
        run(std::process::Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0x61 0 1M",
                "-c",
                "write -P 0x62 3145216 1536",
            ])
            .args(["-c", &format!("write -P 0x63 {} 1536", size - 1536)])
            .arg(&src))?;

        let dat = tmp.path().join("out.vma");
        let socket = tmp.path().join("t.sock");
        let (shared, export, target, thread) = one_disk(&dat, &socket, size).await?;

        let uri = format!("nbd+unix:///drive-x?socket={}", socket.display());
        let s = src.clone();
        tokio::task::spawn_blocking(move || {
            run(std::process::Command::new("qemu-img")
                .args(["convert", "-n", "-f", "raw", "-O", "raw"])
                .arg(&s)
                .arg(&uri))
        })
        .await??;
        assert!(target.wait_closed(Duration::from_secs(10)).await, "no DISC");
        assert_eq!(export.first_missing(), None);
        target.shutdown().await;
        let out = thread.join().expect("writer finished");
        out.finish()?;
        assert!(!shared.failed(), "{:?}", shared.error());
        assert_eq!(shared.transferred(), size);

        let devs = dissect_devices(&dat)?;
        assert_eq!(
            devs,
            vec![("drive-x".to_string(), size, sha256_file(&src)?)]
        );
        Ok(())
    }

    /// A target at `socket` exporting one disk `drive-x` of `size` bytes, its writer thread
    /// writing the archive `dat` (uncompressed, with a config).
    async fn one_disk(
        dat: &std::path::Path,
        socket: &std::path::Path,
        size: u64,
    ) -> Result<(Arc<Shared>, Arc<DiskExport>, NbdTarget, WriterThread)> {
        let out = ArchiveFile::create(dat, vmdump_config::Codec::None, 1, 1)?;
        let mut writer = vmdump_vma::Writer::new(out);
        writer.add_config("qemu-server.conf", b"memory: 128\n")?;
        let id = writer.register_device("drive-x", size)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(CHANNEL_CLUSTERS);
        let thread = WriterThread::spawn(
            writer,
            rx,
            Arc::clone(&shared),
            vec!["drive-x".into()],
            vec![id],
        )?;
        let export = Arc::new(DiskExport::new("drive-x", id.get(), size));
        let target =
            NbdTarget::start(socket, vec![Arc::clone(&export)], tx, Arc::clone(&shared)).await?;
        Ok((shared, export, target, thread))
    }

    /// A target of one disk of `size` bytes with its writer thread, fed by our own NBD client
    /// with exactly what a `sync=top` job sends: `clusters` (whole 64 KiB clusters, the last
    /// one short), each filled with its number. The job "reports" `copied` bytes.
    async fn top_job(size: u64, clusters: &[u64], copied: u64) -> Result<TopJob> {
        let tmp = tempfile::tempdir()?;
        let dat = tmp.path().join("out.vma");
        let socket = tmp.path().join("t.sock");
        let (shared, export, target, thread) = one_disk(&dat, &socket, size).await?;
        let client = vmdump_nbd::Client::connect_unix(
            &socket,
            "drive-x",
            &vmdump_nbd::ClientOptions::default(),
        )
        .await?;
        let mut want = vec![0u8; size as usize];
        for &n in clusters {
            let start = n * CLUSTER_SIZE;
            let end = (start + CLUSTER_SIZE).min(size);
            want[start as usize..end as usize].fill(n as u8 | 1);
            let data = bytes::Bytes::from(want[start as usize..end as usize].to_vec());
            client.write(start, data).await?;
        }
        export.expect_copied(copied);
        client.flush().await?;
        client.disconnect().await?;
        let closed = target.wait_closed(Duration::from_secs(10)).await;
        target.shutdown().await;
        let out = thread.join();
        Ok(TopJob {
            tmp,
            dat,
            want,
            shared,
            export,
            closed,
            out,
        })
    }

    struct TopJob {
        tmp: tempfile::TempDir,
        dat: std::path::PathBuf,
        want: Vec<u8>,
        shared: Arc<Shared>,
        export: Arc<DiskExport>,
        closed: bool,
        out: Option<ArchiveFile>,
    }

    #[tokio::test]
    async fn clusters_a_top_job_skipped_are_recorded_as_zero() -> Result<()> {
        let size = 40 * CLUSTER_SIZE + 1536;
        let sent = [0, 1, 2, 17, 39, 40];
        // The last cluster is short, but the job counts it as a whole one.
        let j = top_job(size, &sent, 6 * CLUSTER_SIZE).await?;
        assert!(j.closed, "no DISC");
        assert!(!j.shared.failed(), "{:?}", j.shared.error());
        assert_eq!(j.export.first_missing(), None);
        assert_eq!(j.export.unallocated(), 35 * CLUSTER_SIZE);
        assert_eq!(j.shared.transferred(), size);
        j.out.expect("writer finished").finish()?;
        let want = j.tmp.path().join("want.raw");
        std::fs::write(&want, &j.want)?;
        assert_eq!(
            dissect_devices(&j.dat)?,
            vec![("drive-x".to_string(), size, sha256_file(&want)?)]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_cluster_the_top_job_copied_but_that_never_arrived_fails_the_backup() -> Result<()> {
        let size = 40 * CLUSTER_SIZE;
        // The job says 4 clusters; 3 arrived.
        let j = top_job(size, &[3, 4, 30], 4 * CLUSTER_SIZE).await?;
        assert!(j.shared.failed(), "a lost cluster went unnoticed");
        let err = j.shared.error().expect("the failure is recorded");
        assert!(
            matches!(
                &*err,
                Failure::Lost {
                    device,
                    copied: 4,
                    arrived: 3
                } if device == "drive-x"
            ),
            "{err:?}"
        );
        // Nothing was filled: the archive is never finished.
        assert_eq!(j.export.unallocated(), 0);
        assert_eq!(j.export.first_missing(), Some(0));
        drop(j.out);
        Ok(())
    }
}
